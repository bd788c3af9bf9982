"""Daemon-wide defaults that requests fall back to: user, workdir, env vars.

Upstream keeps these in `execcontext`; `/init` changes them (control-plane
issue). Internal `E2B_*` variables live apart from the user-set ones so that an
`/init` that replaces the user set never drops them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ExecContext:
    default_user: str = "root"
    default_workdir: str | None = None
    user_envs: dict[str, str] = field(default_factory=dict)
    internal_envs: dict[str, str] = field(default_factory=dict)

    def envs(self) -> dict[str, str]:
        """The global env store as children see it (`/envs` shows the same)."""
        return {**self.user_envs, **self.internal_envs}
