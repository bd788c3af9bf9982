"""What envd does to the guest itself: clock, hosts file, CA store, NFS, MMDS, metrics."""
