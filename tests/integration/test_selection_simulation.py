"""Device-aware rounds in real Flower simulations: simulated slow devices, deadlines that
drop stragglers, and resource-aware sizing of local work."""

from __future__ import annotations

import pytest

from fedpriv import load_config, run

pytestmark = pytest.mark.simulation

#: Four devices, the slowest 8x slower (client k: 8 ** (k / 3)), each on its own actor.
FLEET = [
    "data=digits",
    "model=logreg",
    "num_clients=4",
    "selection.device_profiles=heterogeneous",
    "selection.speed_spread=8",
    "engine.cpus_per_client=0.5",
    "train.batch_size=32",
]


def steps_by_partition(record: dict) -> dict[int, int]:
    return {int(c["partition-id"]): int(c["steps"]) for c in record["clients"]}


def test_a_deadline_drops_a_stalled_device_and_the_round_goes_on(
    tmp_path, register_for_test
) -> None:
    import stalled_device

    from fedpriv.selection import SELECTIONS

    register_for_test(SELECTIONS, "stalled_device", stalled_device.StalledDevice)
    result = run(
        load_config(
            [
                "data=digits",
                "model=logreg",
                "num_clients=2",
                "rounds=2",
                "engine.cpus_per_client=0.5",
                "selection.name=stalled_device",
                "selection.round_deadline_s=3",
                f"output_dir={tmp_path}",
            ]
        )
    )
    assert result.summary["rounds"] == 2
    for record in result.history:
        assert sorted(steps_by_partition(record)) == [0]  # the stalled device is dropped
        assert len(record["stragglers"]) == 1  # recorded (and logged)
        assert record["accuracy"] > 0.2  # aggregated the device that answered (chance: 0.1)


def test_resource_aware_probes_then_gives_slow_devices_fewer_steps(tmp_path) -> None:
    result = run(
        load_config(
            [
                *FLEET,
                "selection=resource_aware",
                "selection.device_profiles=heterogeneous",
                "selection.speed_spread=8",
                "selection.probe_steps=3",
                "rounds=5",
                "selection.round_deadline_s=1.5",
                "train.local_epochs=100",
                f"output_dir={tmp_path / 'aware'}",
            ]
        )
    )
    seen: set[int] = set()
    for record in result.history:  # a device's first round is its probe
        for partition, steps in steps_by_partition(record).items():
            assert steps == 3 or partition in seen
            seen.add(partition)
    assert seen == {0, 1, 2, 3}
    later = [steps_by_partition(r) for r in result.history[1:]]
    sized = [steps for steps in later if {0, 3} <= set(steps) and steps[3] != 3]
    assert sized, "the slowest device took part after its probe"
    for steps in sized:  # work sized by measured speed: the 8x slower device does less
        assert steps[0] > 2 * steps[3] >= 2
