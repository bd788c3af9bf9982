"""Who a request acts as: Linux users, Basic-auth, path expansion."""
