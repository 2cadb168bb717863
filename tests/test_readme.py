"""README.md is checked like code: its Space front-matter against requirements.txt, its API
examples against a running `python app.py`, and its endpoint list against the condition registry.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from gradio_client import Client
from PIL import Image

from conditions import CONDITIONS
from settings import DEFAULT_MODEL_IDS
from testkit.paths import PROJECT_ROOT
from ui.compose import UNIT_SETTINGS

README = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
DOCUMENTED_URL = "http://127.0.0.1:7860"  # what the examples call; the tests swap in the server's
ENDPOINTS = [f"/{name}" for name in CONDITIONS] + ["/compose", "/upscale", "/annotate"]
REQUIRED_KEYS = {
    "title",
    "emoji",
    "colorFrom",
    "colorTo",
    "sdk",
    "sdk_version",
    "python_version",
    "app_file",
    "license",
    "suggested_hardware",
    "short_description",
    "pinned",
}
SPACE_COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}


def front_matter(text: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md must open with the Space's YAML front-matter between --- lines"
    return yaml.safe_load(match.group(1))


def section(text: str, heading: str) -> str:
    """From `heading` (e.g. '## API') to the next heading of the same or a higher level, skipping
    `#` lines inside code blocks."""
    level = len(heading.split()[0])
    lines = text.splitlines(keepends=True)
    start = lines.index(heading + "\n")
    in_code = False
    for index in range(start + 1, len(lines)):
        line = lines[index]
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(rf"#{{1,{level}}} ", line):
            return "".join(lines[start:index])
    return "".join(lines[start:])


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def for_server(code: str, url: str) -> str:
    assert DOCUMENTED_URL in code, f"the example should call {DOCUMENTED_URL}"
    return code.replace(DOCUMENTED_URL, url.rstrip("/"))


API = section(README, "## API")
PYTHON_BLOCKS = code_blocks(section(API, "### Python"), "python")
CURL_BLOCKS = code_blocks(section(API, "### curl"), "bash")
POSE_JSON_BLOCKS = code_blocks(section(API, "### OpenPose JSON"), "python")


def pinned_version(requirements: str, package: str) -> str:
    match = re.search(rf"^{package}==(\S+)", requirements, re.MULTILINE)
    assert match, f"requirements.txt should pin {package}"
    return match.group(1)


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(server.url, verbose=False)


@pytest.fixture(scope="module")
def endpoints(client) -> dict:
    return client.view_api(return_format="dict", print_info=False)["named_endpoints"]


def test_front_matter_declares_a_gradio_space_on_the_pinned_gradio():
    config = front_matter(README)
    assert set(config) >= REQUIRED_KEYS, f"missing: {sorted(REQUIRED_KEYS - set(config))}"
    assert config["sdk"] == "gradio"
    assert config["app_file"] == "app.py" and (PROJECT_ROOT / "app.py").is_file()
    requirements = (PROJECT_ROOT / "requirements.txt").read_text()
    assert config["sdk_version"] == pinned_version(requirements, "gradio")
    assert config["python_version"] == "3.11"  # a string: unquoted 3.10 would read as 3.1
    assert config["license"] == "apache-2.0"
    assert config["pinned"] is False
    assert not config["suggested_hardware"].startswith("cpu"), "suggest a GPU"
    assert {config["colorFrom"], config["colorTo"]} <= SPACE_COLORS
    assert 0 < len(config["short_description"]) <= 60  # the Hub's limit


def test_quick_start_is_kept():
    quick_start = section(README, "## Quick start")
    assert "make run" in quick_start and "make test" in quick_start


def test_api_section_names_every_endpoint():
    missing = [endpoint for endpoint in ENDPOINTS if f"`{endpoint}`" not in API]
    assert not missing, f"README's API section does not mention {missing}"
    assert "Use via API" in API


def test_python_example_runs_against_the_server(server, monkeypatch):
    code = for_server(PYTHON_BLOCKS[0], server.url)
    monkeypatch.chdir(PROJECT_ROOT)  # the example's paths are relative to the repository
    namespace: dict = {}
    exec(compile(code, "README.md (### Python, first block)", "exec"), namespace)
    gallery, seed = namespace["gallery"], namespace["seed"]
    assert seed == 42
    assert [item["caption"] for item in gallery] == ["Control map", "Image 1 · seed 42"]
    for item in gallery:
        with Image.open(item["image"]) as image:
            assert image.format == "PNG" and image.size == (384, 256)  # coffee.jpg is 600 x 400


def test_pose_json_example_runs_against_the_server(server, monkeypatch):
    (block,) = POSE_JSON_BLOCKS
    monkeypatch.chdir(PROJECT_ROOT)
    namespace: dict = {}
    code = for_server(block, server.url).replace("steps=10", "steps=1")
    exec(compile(code, "README.md (### OpenPose JSON)", "exec"), namespace)
    assert namespace["gallery"][0]["caption"] == "Control map"
    assert namespace["pose"]["canvas_width"] == 512 and len(namespace["gallery"]) == 2


def documented_calls() -> list[tuple[str, set[str]]]:
    """(api_name, keyword names) of every `client.predict(...)` in the API section."""
    calls = []
    for block in PYTHON_BLOCKS:
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "predict":
                keywords = {keyword.arg: keyword.value for keyword in node.keywords}
                api_name = ast.literal_eval(keywords.pop("api_name"))
                calls.append((api_name, set(keywords)))
    return calls


def test_python_examples_cover_every_endpoint_with_real_keywords(endpoints):
    calls = documented_calls()
    assert sorted({api_name for api_name, _ in calls}) == sorted(ENDPOINTS)
    for api_name, keywords in calls:
        names = {parameter["parameter_name"] for parameter in endpoints[api_name]["parameters"]}
        assert keywords <= names, f"{api_name} has no {sorted(keywords - names)}"


def test_python_examples_for_every_endpoint_run(server, tmp_path, monkeypatch):
    drawing = np.full((256, 256, 3), 250, np.uint8)
    drawing[120:130, 30:220] = 0
    Image.fromarray(drawing).save(tmp_path / "my_drawing.png")
    setup = for_server(PYTHON_BLOCKS[0], server.url).split("gallery, seed =")[0]
    calls = PYTHON_BLOCKS[1].replace('"my_drawing.png"', repr(str(tmp_path / "my_drawing.png")))
    monkeypatch.chdir(PROJECT_ROOT)
    namespace: dict = {}
    exec(compile(setup, "README.md (### Python, client)", "exec"), namespace)
    client = namespace["client"]
    predict = client.predict
    results: list = []

    def quick(*args, api_name, **kwargs):  # one step per image: the tiny models' output is noise
        if api_name == "/upscale":  # its default strength 0.35 runs int(3 * 0.35) = 1 step
            kwargs.setdefault("steps", 3)
        elif api_name != "/annotate":
            kwargs.setdefault("steps", 1)
        result = predict(*args, api_name=api_name, **kwargs)
        results.append((api_name, result))
        return result

    monkeypatch.setattr(client, "predict", quick)
    exec(compile(calls, "README.md (### Python, every endpoint)", "exec"), namespace)
    assert sorted({api_name for api_name, _ in results}) == sorted(ENDPOINTS)
    for api_name, result in results:
        if api_name == "/annotate":
            path, pose = result
            assert Image.open(path).size[0] > 0 and pose["people"]  # OpenPose: MediaPipe here
        elif api_name == "/upscale":  # the upscaled image alone
            gallery, seed = result
            assert [item["caption"] for item in gallery] == [f"Image 1 · seed {seed}"]
        else:
            gallery, seed = result
            maps = 2 if api_name == "/compose" else 1
            assert gallery[0]["caption"].startswith("Control map"), api_name
            assert len(gallery) == maps + 1, api_name
            assert 0 <= seed < 2**31


def keyword_table() -> dict[str, set[str]]:
    rows = re.findall(r"^\| `(/\w+)` \| (.*) \|$", API, re.MULTILINE)
    return {endpoint: set(re.findall(r"`(\w+)`", cell)) for endpoint, cell in rows}


def test_keyword_table_matches_the_api(endpoints):
    shared_text = re.search(r"Keywords every generate endpoint takes:(.*?)On top", API, re.DOTALL)
    assert shared_text, "the API section should list the shared keywords"
    shared = set(re.findall(r"`(\w+)`", shared_text.group(1)))
    table = keyword_table()
    assert sorted(table) == sorted(ENDPOINTS)
    for endpoint, listed in table.items():
        names = {parameter["parameter_name"] for parameter in endpoints[endpoint]["parameters"]}
        if endpoint == "/annotate":
            assert listed == names
        elif endpoint == "/upscale":  # its own keywords, and some of the shared ones
            assert listed <= names and names - listed <= shared, endpoint
        elif endpoint == "/compose":
            units = {f"{name}_k" for name in ("enabled", "condition", "annotator", "strength")}
            units |= {"control_start_k", "control_end_k", "image_2", "image_3"}
            units |= {f"{name}_k" for name in UNIT_SETTINGS} | {"pose_json_k"}
            assert listed - {"image"} == units
            expanded = {name.replace("_k", f"_{k}") for name in units for k in (1, 2, 3)}
            assert names - shared - {"image", "prompt"} == expanded - {"image_1"}
        else:
            assert shared <= names, endpoint
            assert listed - {"image"} == names - shared - {"image", "prompt"}, endpoint


def test_curl_examples_run_against_the_server(server):
    if shutil.which("curl") is None or shutil.which("bash") is None:
        pytest.skip("the curl example needs curl and bash")
    script = for_server("\n".join(CURL_BLOCKS), server.url)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", result.stdout, re.MULTILINE)
    # "generating" events carry TAESD previews; the last event of each job is its result.
    outcomes = [(event, data) for event, data in events if event not in ("heartbeat", "generating")]
    previews = [json.loads(data) for event, data in events if event == "generating"]
    captions = [gallery[0]["caption"] for gallery, _ in previews]
    assert captions.count("Preview 1, step 2 of 10") == len(CURL_BLOCKS), captions
    assert [event for event, _ in outcomes] == ["complete"] * len(CURL_BLOCKS), result.stdout
    for _, data in outcomes:
        gallery, seed = json.loads(data)
        assert seed == 42
        assert [item["caption"] for item in gallery] == ["Control map", "Image 1 · seed 42"]
        assert all(item["image"]["url"].startswith(server.url) for item in gallery)


def test_docker_section_matches_the_dockerfile():
    docker = section(README, "## Docker")
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    build_args = set(re.findall(r"--build-arg (\w+)=", docker))
    assert {"BAKE_MODELS", "XFORMERS"} <= build_args
    for name in build_args:
        assert re.search(rf"^ARG {name}=", dockerfile, re.MULTILINE), name
    assert "docker run --gpus all -p 7860:7860" in docker
    roles = re.search(r"list of roles\s*\((.*?)\)", docker, re.DOTALL)
    assert roles, "the Docker section should list the roles BAKE_MODELS takes"
    assert re.findall(r"`(\w+)`", roles.group(1)) == list(DEFAULT_MODEL_IDS)


def test_benchmark_commands_run_modules_that_exist():
    """The Benchmarks section and gpu_check.sh run benchmarks as modules from the repository root
    (`python -m benchmarks.<name>`), never as script paths, which would leave the root off the
    import path."""
    script = (PROJECT_ROOT / "benchmarks" / "gpu_check.sh").read_text()
    for where, text in (
        ("README's Benchmarks", section(README, "## Benchmarks")),
        ("gpu_check.sh", script),
    ):
        modules = re.findall(r"python3? -m (benchmarks\.\w+)", text)
        assert modules, where
        for module in modules:
            assert importlib.util.find_spec(module) is not None, f"{where}: {module}"
        assert not re.search(r"python3? \S*benchmarks/\w+\.py", text), where
