import subprocess

from otas.provenance import git_commit


def test_commit_is_marked_dirty_when_tracked_files_changed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert git_commit() == "unknown"  # not a checkout
    git = lambda *a: subprocess.run(["git", *a], check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    head = git_commit()
    assert len(head) == 40 and not head.endswith("-dirty")
    (tmp_path / "new.txt").write_text("untracked files do not count")
    assert git_commit(short=True) == head[: len(git_commit(short=True))]
    (tmp_path / "f.txt").write_text("b")
    assert git_commit() == f"{head}-dirty"


def test_a_bench_script_names_its_own_command_whoever_runs_it():
    from otas.provenance import REPO, run_meta

    meta = run_meta(str(REPO / "bench" / "replay_loads.py"), ["--loads", "1,2"])
    assert meta["command"] == "python bench/replay_loads.py --loads 1,2"  # not pytest's command line
    assert run_meta(str(REPO / "bench" / "merge_every.py"), [])["command"] == "python bench/merge_every.py"
