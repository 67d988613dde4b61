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
