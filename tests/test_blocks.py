"""Marked blocks: one command's section of a page, rewritten in place and carried over by others."""

from pathlib import Path

from experiments import blocks

REPO = Path(__file__).resolve().parents[1]


def test_put_replaces_only_the_block():
    page = "# T\n\nbefore\n<!-- b start -->\nold\n<!-- b end -->\nafter\n"
    assert blocks.put(page, "b", "new\nlines") == "# T\n\nbefore\n<!-- b start -->\nnew\nlines\n<!-- b end -->\nafter\n"


def test_put_appends_a_missing_block_under_its_heading_once():
    once = blocks.put("# T\n", "b", "x", heading="## H")
    assert once == "# T\n\n## H\n\n<!-- b start -->\nx\n<!-- b end -->\n"
    assert blocks.put(once, "c", "y", heading="## H") == once + "\n<!-- c start -->\ny\n<!-- c end -->\n"


def test_find_needs_both_markers_in_order():
    assert blocks.find("<!-- b end -->\n<!-- b start -->", "b") is None
    assert blocks.find("<!-- b start -->\nx", "b") is None
    assert blocks.find("a<!-- b start -->x<!-- b end -->z", "b") == "<!-- b start -->x<!-- b end -->"
    assert blocks.find("<!-- bb start -->x<!-- bb end -->", "b") is None


def test_the_benchmark_blocks_in_the_repo_are_found_by_the_names_the_benchmarks_write():
    from benchmarks import parallel, train_step, weight_grad

    assert blocks.find((REPO / "README.md").read_text(), train_step.README_BLOCK.format(backend="cpu"))
    page = (REPO / "docs" / "performance.md").read_text()
    for name in (parallel.BLOCK, weight_grad.BLOCK):
        assert blocks.find(page, name.format(backend="cpu"))


def test_a_page_without_the_study_s_markers_is_left_alone(tmp_path):
    page = tmp_path / "README.md"
    page.write_text("# mine\n")
    assert not blocks.rewrite(page, "b", "x")
    assert page.read_text() == "# mine\n"
    assert not blocks.rewrite(tmp_path / "absent.md", "b", "x")
    assert not (tmp_path / "absent.md").exists()


def test_a_benchmark_s_recorded_command_pastes_back_to_the_same_arguments():
    import shlex

    from benchmarks import reporting

    argv = ["--batch", "64", "--note", "two words", "--glob=*.md", "it's"]
    command = reporting.command_line("benchmarks.train_step", argv)
    assert shlex.split(command) == ["python", "-m", "benchmarks.train_step", *argv]
    assert reporting.command_line("benchmarks.parallel", []) == "python -m benchmarks.parallel"


def test_write_block_keeps_one_block_per_backend(tmp_path):
    from benchmarks import reporting

    page = tmp_path / "performance.md"
    page.write_text("# Perf\n")
    reporting.write_block("cpu numbers", "cpu", "bench {backend}", path=page)
    reporting.write_block("gpu numbers", "gpu", "bench {backend}", path=page)
    reporting.write_block("new cpu numbers", "cpu", "bench {backend}", path=page)
    text = page.read_text()
    assert text.count("## Performance") == 1 and text.count("cpu numbers") == 1
    assert blocks.find(text, "bench cpu") == "<!-- bench cpu start -->\nnew cpu numbers\n<!-- bench cpu end -->"
    assert blocks.find(text, "bench gpu") == "<!-- bench gpu start -->\ngpu numbers\n<!-- bench gpu end -->"


def test_the_benchmarks_name_the_host_the_way_run_records_do(monkeypatch):
    from ap_jax import records
    from benchmarks import train_step

    monkeypatch.setattr(records, "cpu_name", lambda: "Fake CPU 9000")
    assert train_step.machine().startswith("Fake CPU 9000, ")
    device = {"backend": "gpu", "device_kind": "H100", "cpu": "Fake CPU 9000", "cpu_cores": 16}
    assert records.machine_line(device) == "gpu (H100), host CPU Fake CPU 9000, 16 cores"
