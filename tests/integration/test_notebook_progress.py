"""A run started in a Jupyter notebook shows its progress bar as a widget: a real
IPython kernel runs a small experiment, and its messages are read back."""

from __future__ import annotations

import pytest
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.processes

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_a_run_in_a_notebook_draws_a_progress_widget(tmp_path) -> None:
    code = (
        "import fedpriv\n"
        "from fedpriv.runtime.progress import in_notebook\n"
        "result = fedpriv.run(fedpriv.load_config(['engine=inprocess', 'rounds=2', "
        f"'num_clients=3', 'model=logreg', 'output_dir={tmp_path / 'run'}']))\n"
        "print('in_notebook', in_notebook(), 'rounds', len(result.history))\n"
    )
    messages: list[dict] = []
    manager, client = start_new_kernel(kernel_name="python3", env={"CI": ""})
    try:
        reply = client.execute_interactive(code, timeout=300, output_hook=messages.append)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok", reply["content"]
    printed = "".join(m["content"]["text"] for m in messages if m["msg_type"] == "stream")
    assert "in_notebook True rounds 2" in printed
    widgets = [m for m in messages if m["msg_type"] == "display_data"]
    assert any(WIDGET in m["content"]["data"] for m in widgets), [m["msg_type"] for m in messages]
