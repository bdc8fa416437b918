"""The in-process engine's grid: each node its own Context, replies stamped as Flower's
simulation stamps them, copies across the boundary, errors as error replies; and a real
ServerApp driving a real ClientApp through it."""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from fedpriv.config import InProcessEngine
from fedpriv.runtime.inprocess import InProcessGrid, run_inprocess


def counting_node(message: Message, context: Context) -> Message:
    """Counts its messages in ``context.state``, tampers with what it was sent, and
    replies its partition and count; ``fail`` in the content makes it raise."""
    if "fail" in message.content.config_records:
        raise RuntimeError("asked to fail")
    state = context.state.config_records.setdefault("seen", ConfigRecord({"count": 0}))
    state["count"] = int(state["count"]) + 1  # type: ignore[call-overload]
    message.content["tampered"] = ConfigRecord({"by": "node"})
    metrics = MetricRecord(
        {
            "partition-id": int(context.node_config["partition-id"]),
            "num-partitions": int(context.node_config["num-partitions"]),
            "count": int(state["count"]),  # type: ignore[call-overload]
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=message)


def train(node: int, **records: ConfigRecord) -> Message:
    return Message(RecordDict(records), dst_node_id=node, message_type="train")


def test_each_node_has_its_partition_and_keeps_its_state_across_messages():
    grid = InProcessGrid(counting_node, 3, node_ids=[7, 8, 9])
    for expected_count in (1, 2):
        replies = grid.send_and_receive([train(node) for node in grid.get_node_ids()])
        seen = {r.metadata.src_node_id: dict(r.content.metric_records["metrics"]) for r in replies}
        assert seen == {
            node: {"partition-id": p, "num-partitions": 3, "count": expected_count}
            for p, node in enumerate((7, 8, 9))
        }


def test_a_reply_answers_its_message_and_neither_side_shares_objects():
    grid = InProcessGrid(counting_node, 2)
    message = train(next(iter(grid.get_node_ids())))
    (sent,) = grid.push_messages([message])
    (reply,) = grid.pull_messages([sent])
    assert reply.metadata.reply_to_message_id == sent == message.metadata.message_id
    assert reply.metadata.src_node_id == message.metadata.dst_node_id
    assert reply.metadata.message_id not in ("", sent)
    assert reply.metadata.run_id == grid.run.run_id
    assert "tampered" not in message.content  # the node changed its own copy only
    assert list(grid.pull_messages([sent])) == []  # a reply is pulled once


def test_a_node_that_raises_answers_with_flowers_error_reply():
    grid = InProcessGrid(counting_node, 1)
    (reply,) = grid.send_and_receive([train(next(iter(grid.get_node_ids())), fail=ConfigRecord())])
    assert reply.has_error()
    assert reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert "ClientAppException" in reply.error.reason and "asked to fail" in reply.error.reason


def test_a_message_to_no_node_is_dropped_and_unpulled_messages_wait():
    delivered: list[int] = []

    def node(message: Message, context: Context) -> Message:
        delivered.append(context.node_id)
        return counting_node(message, context)

    grid = InProcessGrid(node, 2, node_ids=[1001, 1002])
    assert list(grid.push_messages([train(5)])) == []
    first, second = grid.push_messages([train(1001), train(1002)])
    assert delivered == []  # nodes work when the server pulls
    assert [r.metadata.reply_to_message_id for r in grid.pull_messages([second])] == [second]
    assert delivered == [1002]
    assert [r.metadata.reply_to_message_id for r in grid.pull_messages([first])] == [first]


def test_a_server_app_drives_a_client_app_to_the_end():
    client = ClientApp()
    client.train()(counting_node)
    server, partitions = ServerApp(), []

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        replies = grid.send_and_receive([train(node) for node in grid.get_node_ids()])
        partitions.extend(r.content.metric_records["metrics"]["partition-id"] for r in replies)

    run_inprocess(server, client, 4, InProcessEngine())
    assert sorted(partitions) == [0, 1, 2, 3]
