"""Running experiments on a real fleet: a SuperLink and a SuperNode per device."""

from fedpriv.deployment.credentials import Credentials, FleetKeys, write_fleet_keys
from fedpriv.deployment.fleet import LocalFleet, Superlink, Supernode, start_superlink
from fedpriv.deployment.impairment import Impairment
from fedpriv.deployment.network import Network, network_problem
from fedpriv.deployment.network_fleet import NetworkFleet

__all__ = [
    "Credentials",
    "FleetKeys",
    "Impairment",
    "LocalFleet",
    "Network",
    "NetworkFleet",
    "Superlink",
    "Supernode",
    "network_problem",
    "start_superlink",
    "write_fleet_keys",
]
