"""The runner's batch and server parts that need no ComfyUI: seeds, the jobs' prompts, the rerun
command, progress lines, server-side checks of a workflow against an /object_info, file names of
downloaded images, and the messages and exit status of bad --seeds / an unreachable server."""

import io
import socket

import pytest

from flashface_runner import __main__ as runner
from flashface_runner import jobs, progress, server_client
from flashface_runner.server_schema import prepare_for_server
from flashface_runner.ui_format import RunnerError
from support.object_info import HAS_MODELS, object_info, portrait_workflow

PORTRAIT = "workflows/FlashFace portrait.json"


def test_seed_ranges_and_lists():
    assert jobs.parse_seeds("1-3,7") == [1, 2, 3, 7]
    assert jobs.parse_seeds("7, 9,12") == [7, 9, 12]
    assert jobs.parse_seeds("4-4,3-5") == [4, 3, 5]  # order kept, repeats dropped
    assert len(jobs.parse_seeds("1-50")) == 50


@pytest.mark.parametrize("text, says", [("", "no seeds given"), ("  ", "no seeds given"),
                                        ("5-3", "the range 5-3 is empty"), ("a", "'a' is not a seed or a range"),
                                        ("1-", "'1-' is not"), ("-1", "'-1' is not"), ("1,,2", "'' is not"),
                                        ("0-200000", "more than 100000 jobs"),
                                        (f"{2 ** 64}", "above ComfyUI's largest seed")])
def test_bad_seeds_name_the_option(text, says):
    with pytest.raises(RunnerError) as error:
        jobs.parse_seeds(text)
    assert str(error.value).startswith(f"--seeds {text!r}: ") and says in str(error.value)


def test_bad_seeds_exit_before_anything_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(runner.comfyui.PACK_DIR)
    assert runner.main([PORTRAIT, "--comfyui", str(tmp_path), "--seeds", "9-2"]) == runner.EXIT_STATUS["failed"] == 1
    assert "error: --seeds '9-2': the range 9-2 is empty" in capsys.readouterr().err


def test_every_sampler_seed_is_set_and_linked_ones_are_left():
    prompt = {"1": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}},
              "2": {"class_type": "RandomNoise", "inputs": {"noise_seed": 6}},
              "3": {"class_type": "KSampler", "inputs": {"seed": ["9", 0]}},  # linked from node 9
              "4": {"class_type": "Toggle", "inputs": {"seed": True}}}
    inputs = jobs.seed_inputs(prompt)
    assert inputs == [("1", "seed"), ("2", "noise_seed")]
    assert jobs.describe_seed_inputs(prompt, inputs) == "#1 KSampler.seed, #2 RandomNoise.noise_seed"
    changed = jobs.job_prompt(prompt, inputs, 42)
    assert changed["1"]["inputs"]["seed"] == 42 and changed["2"]["inputs"]["noise_seed"] == 42
    assert changed["3"]["inputs"]["seed"] == ["9", 0] and prompt["1"]["inputs"]["seed"] == 5  # a copy
    assert jobs.job_prompt(prompt, inputs, None) == prompt
    assert jobs.seed_assignments(inputs, 42) == ["1.seed=42", "2.noise_seed=42"]


def test_the_rerun_command_names_just_the_failed_seeds():
    failed = [jobs.Job(2, 4), jobs.Job(5, 9)]
    argv = ["w f.json", "--seeds", "1-9", "--server", "http://a:1", "--", "--lowvram"]
    assert jobs.rerun_command(argv, failed) == (
        "python -m flashface_runner 'w f.json' --server http://a:1 --seeds 4,9 -- --lowvram")
    assert jobs.rerun_command(["w.json", "--seeds=1-9"], failed) == "python -m flashface_runner w.json --seeds 4,9"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_progress_lines_with_time_left():
    err, out, clock = io.StringIO(), io.StringIO(), FakeClock()
    shown = progress.Progress(3, stream=err, out=out, tty=False, clock=clock)
    batch = jobs.make_jobs([7, 8, 9])
    shown.started(batch[0])
    shown.step("", 1, 2)
    clock.now = 10.0
    batch[0].images = ["out/a.png"]
    shown.finished(batch[0], 10.0)
    batch[1].where, batch[1].error = "http://s:1", "node #18 FlashFaceSampler failed: RuntimeError: boom"
    shown.started(batch[1], batch[1].where)
    clock.now = 20.0
    shown.finished(batch[1], 10.0)
    assert out.getvalue() == "out/a.png\n"
    assert err.getvalue().splitlines() == [
        "job 1/3 (seed 7) done in 10.0 s; 1/3 finished, about 0:20 left",
        "job 2/3 (seed 8) on http://s:1 failed: node #18 FlashFaceSampler failed: RuntimeError: boom"]


def test_terminal_progress_is_one_line_rewritten():
    err, out, clock = io.StringIO(), io.StringIO(), FakeClock()
    shown = progress.Progress(2, stream=err, out=out, tty=True, clock=clock)
    batch = jobs.make_jobs([1, 2])
    shown.started(batch[0], "http://a:1")
    shown.started(batch[1], "http://b:2")
    shown.step("http://a:1", 3, 25)
    assert err.getvalue().rsplit("\r\x1b[K", 1)[1] == (
        "[0/2] · seed 1 on http://a:1: step 3/25 · seed 2 on http://b:2: starting")
    clock.now = 60.0
    batch[0].where, batch[0].images = "http://a:1", ["x.png"]
    shown.finished(batch[0], 60.0)
    assert err.getvalue().rsplit("\r\x1b[K", 1)[1] == "[1/2] · seed 2: starting · 1:00 left"
    shown.close()
    assert err.getvalue().endswith("\r\x1b[K") and "\n" not in err.getvalue()


def test_downloaded_images_are_named_by_seed(tmp_path):
    path = server_client.local_image_path(tmp_path, "FlashFace", "portrait_00003_.png", 7)
    assert path == tmp_path / "FlashFace" / "portrait_seed7.png"
    path.parent.mkdir()
    path.write_bytes(b"x")
    assert server_client.local_image_path(tmp_path, "FlashFace", "portrait_00009_.png", 7).name == "portrait_seed7_2.png"
    assert server_client.local_image_path(tmp_path, "", "portrait_00009_.png", None).name == "portrait_00009_.png"


def test_a_ready_server_gets_uploads_for_the_images_it_lacks():
    prompt, problems, uploads = prepare_for_server(portrait_workflow(), object_info(**HAS_MODELS),
                                                   ["18.steps=2"])
    assert problems == [] and prompt["18"]["inputs"]["steps"] == 2
    assert uploads == [(str(n), "image", f"flashface_man_{n - 3}.jpg") for n in (5, 6, 7)]


def test_server_problems_name_the_node_and_what_to_do():
    workflow = portrait_workflow()
    info = object_info(**HAS_MODELS)
    del info["LoadFlashFace"]
    _, problems, _ = prepare_for_server(workflow, info, [])
    assert [(p.kind, p.text.split(":")[0]) for p in problems] == [("node", "node #3 LoadFlashFace")]
    assert "this server has no such node type" in problems[0].text

    _, problems, _ = prepare_for_server(workflow, object_info(**{**HAS_MODELS, "CheckpointLoaderSimple": {"ckpt_name": []},
                                                             "LoadFlashFace": {"flashface_name": ["other.ckpt"]}}), [])
    assert sorted((p.kind, p.text.split(" (")[0]) for p in problems) == [
        ("model", "missing model 'flashface.ckpt'"), ("model", "missing model 'v1-5-pruned-emaonly.safetensors'")]
    assert "(node #3 LoadFlashFace, input flashface_name): put it in the server's models/flashface folder" \
        in " ".join(p.text for p in problems)

    older = object_info(**HAS_MODELS)  # a server whose LoadFlashFace has no weight_dtype yet
    del older["LoadFlashFace"]["input"]["required"]["weight_dtype"]
    _, problems, _ = prepare_for_server(workflow, older, [])
    assert [p.kind for p in problems] == ["input"]
    assert problems[0].text == ("node #3 LoadFlashFace: the workflow saved 2 widget values, its widgets here are 1 "
                                "['flashface_name'] (this server runs another version of that node)")
    newer = object_info(**HAS_MODELS)  # a server whose FlashFaceSampler needs an input the workflow lacks
    newer["FlashFaceSampler"]["input"]["required"]["eta"] = ["FLOAT", {}]
    newer["FlashFaceSampler"]["input"]["required"]["guider"] = ["GUIDER", {}]
    _, problems, _ = prepare_for_server(workflow, newer, [])
    assert [p.text.split(" (")[0] for p in problems] == [
        "node #18 FlashFaceSampler: the workflow saved 10 widget values, its widgets here are 11 ['seed', 'steps', "
        "'text_cfg', 'reference_cfg', 'launch_timestep', 'cfg_rescale', 'sampler_name', 'scheduler', 'denoise', 'eta']",
        "node #18 FlashFaceSampler: this server's FlashFaceSampler needs input 'eta', which the workflow does not give",
        "node #18 FlashFaceSampler: this server's FlashFaceSampler needs input 'guider', which the workflow does not "
        "give"]


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_server_is_named_and_nothing_runs(capsys, monkeypatch):
    monkeypatch.chdir(runner.comfyui.PACK_DIR)
    url = f"http://127.0.0.1:{_closed_port()}"
    assert runner.main([PORTRAIT, "--server", url, "--seeds", "1-3"]) == runner.EXIT_STATUS["server"] == 3
    err = capsys.readouterr().err
    assert f"error: server {url}: cannot reach it: ClientConnectorError" in err
    assert "nothing was queued" in err
