"""``edgetta run CONFIG.yaml``: a long-running process that reads streams, predicts, adapts under its rails,
exposes metrics and survives crashes (checkpoints of adaptation state, source position and output offset,
committed together).

    from edgetta.daemon import Daemon, load_daemon_config
    summary = Daemon(load_daemon_config("cam.yaml")).run()
"""

from edgetta.daemon.config import DaemonConfig, StreamConfig, build_daemon_config, load_daemon_config
from edgetta.daemon.supervisor import Daemon, RunSummary, run_daemon

__all__ = [
    "Daemon",
    "DaemonConfig",
    "RunSummary",
    "StreamConfig",
    "build_daemon_config",
    "load_daemon_config",
    "run_daemon",
]
