"""Running experiments on a real fleet: a SuperLink and a SuperNode per device."""

from fedpriv.deployment.credentials import Credentials, write_credentials
from fedpriv.deployment.fleet import LocalFleet, Supernode, start_superlink

__all__ = ["Credentials", "LocalFleet", "Supernode", "start_superlink", "write_credentials"]
