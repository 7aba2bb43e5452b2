"""A toy container daemon that reports every install step through lightd_sync."""

from lightd_sync import Lifecycle, SyncEngine


class Installer:
    """Install containers (pretend to) and tell the remote how it went."""

    def __init__(self, sync: SyncEngine) -> None:
        self.sync = sync

    def install(self, server: str, image: str) -> bool:
        self.sync.lifecycle(server, Lifecycle.STARTED)
        self.sync.lifecycle(server, Lifecycle.CREATING_CONTAINER)
        if image.endswith(":missing"):  # pretend that Docker failed
            message = f"Docker container creation failed: image {image} not found"
            self.sync.lifecycle(server, Lifecycle.ERROR, message)
            return False
        self.sync.lifecycle(server, Lifecycle.READY)
        return True
