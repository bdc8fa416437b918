"""Running experiments on a real fleet: a SuperLink and a SuperNode per device."""

from fedpriv.deployment.credentials import Credentials, FleetKeys, write_fleet_keys
from fedpriv.deployment.fleet import LocalFleet, Superlink, Supernode, start_superlink

__all__ = [
    "Credentials",
    "FleetKeys",
    "LocalFleet",
    "Superlink",
    "Supernode",
    "start_superlink",
    "write_fleet_keys",
]
