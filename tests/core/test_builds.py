"""The builder, on real archives, real uv environments and real interpreter processes."""

from __future__ import annotations

import io
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

from modelbay.core import builds
from modelbay.core.builds import NOT_AN_ARCHIVE, Builder, BuildResult, normalise_requirements
from modelbay.runtime.sandbox import Bubblewrap
from tests.fixtures.packages import (
    ABEJA_HANDLER,
    BATCH,
    IMPORT_ERROR,
    NOOP,
    PLAIN,
    make_package_dir,
    make_tar_gz,
    make_zip,
)


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One package cache for the tests of a process (uv's cache is safe to share in parallel)."""
    cache = tmp_path_factory.mktemp("uv-cache")
    Bubblewrap().prepare(cache)
    return cache


@pytest.fixture
def builder(tmp_path: Path, uv_cache: Path) -> Builder:
    return Builder(tmp_path / "data", Bubblewrap(), uv_cache_dir=uv_cache)


def zip_of(tmp_path: Path, deployment_py: str = NOOP, requirements: str = "", **kw: object) -> Path:
    return make_zip(make_package_dir(tmp_path, deployment_py, requirements), tmp_path / "pkg.zip", **kw)  # type: ignore[arg-type]


def assert_failed(result: BuildResult, *tail_words: str) -> None:
    assert not result.ok and result.package_dir is None and result.python is None
    tail = result.log.strip().splitlines()[-1]
    assert tail.startswith("Build failed:"), result.log
    for word in tail_words:
        assert word in result.log[-2000:], result.log


def test_a_zip_made_like_ubiops_zip_dir_builds_with_the_code_and_a_working_python(
    tmp_path: Path, builder: Builder
) -> None:
    result = builder.build(zip_of(tmp_path), "b1")

    assert result.ok, result.log
    assert result.package_dir == tmp_path / "data" / "packages" / "b1" / "deployment_package"
    assert (result.package_dir / "deployment.py").read_text() == (tmp_path / "src" / "deployment.py").read_text()
    assert result.python is not None and result.python.is_relative_to(tmp_path / "data" / "envs")
    assert result.has_request_method and not result.has_requests_method
    out = subprocess.run([result.python, "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert out.stdout.strip() == str(result.python.parent.parent)
    assert result.log.splitlines()[0].startswith("Unpacking")
    assert "Creating environment" in result.log and result.log.strip().endswith("Build succeeded")


def test_a_zip_made_with_ubiops_own_zip_dir_builds(tmp_path: Path, builder: Builder) -> None:
    from ubiops.utils import zip_dir

    src = make_package_dir(tmp_path, PLAIN)
    result = builder.build(Path(zip_dir(str(src), str(tmp_path / "u.zip"))), "b1")

    assert result.ok, result.log
    assert result.package_dir is not None and (result.package_dir / "deployment.py").is_file()


def test_a_zip_with_deployment_py_at_its_root_builds_from_the_root(tmp_path: Path, builder: Builder) -> None:
    result = builder.build(zip_of(tmp_path, top_folder=None), "b1")

    assert result.ok, result.log
    assert result.package_dir == tmp_path / "data" / "packages" / "b1"


def test_an_abeja_tar_gz_of_dot_slash_main_py_builds_with_handler_main_handler(
    tmp_path: Path, builder: Builder
) -> None:
    archive = make_tar_gz(make_package_dir(tmp_path, ABEJA_HANDLER, module_file="main.py"), tmp_path / "pkg")
    assert "./main.py" in tarfile.open(archive).getnames()

    result = builder.build(archive, "b1", handler="main:handler")

    assert result.ok, result.log
    assert result.package_dir == tmp_path / "data" / "packages" / "b1"
    assert (result.package_dir / "main.py").is_file()
    assert "Checking main.py" in result.log


def test_the_archive_type_is_detected_by_content_not_by_name(tmp_path: Path, builder: Builder) -> None:
    archive = make_tar_gz(make_package_dir(tmp_path, NOOP), tmp_path / "pkg")
    misnamed = archive.rename(tmp_path / "upload.zip")

    assert builder.build(misnamed, "b1").ok


def test_a_handler_naming_a_missing_function_fails(tmp_path: Path, builder: Builder) -> None:
    archive = make_tar_gz(make_package_dir(tmp_path, ABEJA_HANDLER, module_file="main.py"), tmp_path / "pkg")

    assert_failed(builder.build(archive, "b1", handler="main:predict"), "main.py has no function 'predict'")


def test_a_package_without_deployment_py_fails_saying_where_it_was_looked_for(
    tmp_path: Path, builder: Builder
) -> None:
    src = make_package_dir(tmp_path, NOOP, module_file="model.py")

    result = builder.build(make_zip(src, tmp_path / "pkg.zip"), "b1")

    assert_failed(result, "deployment.py was not found at the root of the archive or in one top-level folder")
    assert not (tmp_path / "data" / "packages" / "b1").exists()


def test_corrupt_bytes_fail_as_not_a_valid_archive(tmp_path: Path, builder: Builder) -> None:
    junk = tmp_path / "pkg.zip"
    junk.write_bytes(b"PK\x03\x04 this is not really a zip" * 10)

    assert_failed(builder.build(junk, "b1"), NOT_AN_ARCHIVE)


def test_a_truncated_tar_gz_fails_as_not_a_valid_archive(tmp_path: Path, builder: Builder) -> None:
    archive = make_tar_gz(make_package_dir(tmp_path, NOOP, extra_files={"big.txt": "x" * 100_000}), tmp_path / "p")
    archive.write_bytes(archive.read_bytes()[:200])

    assert_failed(builder.build(archive, "b1"), NOT_AN_ARCHIVE)


def test_a_zip_slip_member_fails_naming_it_and_nothing_is_written_outside(tmp_path: Path, builder: Builder) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("deployment.py", NOOP)
        zf.writestr("../evil.py", "print('pwned')")
        zf.writestr("/tmp/abs_evil.py", "print('pwned')")

    result = builder.build(archive, "b1")

    assert_failed(result, "'../evil.py'")
    assert not list(tmp_path.rglob("evil.py"))
    assert not (tmp_path / "data" / "packages" / "b1").exists()


def test_an_absolute_zip_member_fails_naming_it(tmp_path: Path, builder: Builder) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("deployment.py", NOOP)
        info = zipfile.ZipInfo("x")
        info.filename = str(tmp_path / "abs_evil.py")  # ZipInfo() would strip the leading slash
        zf.writestr(info, "print('pwned')")

    assert_failed(builder.build(archive, "b1"), "abs_evil.py")
    assert not (tmp_path / "abs_evil.py").exists()


def test_a_tar_symlink_pointing_outside_fails_naming_it(tmp_path: Path, builder: Builder) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = NOOP.encode()
        info = tarfile.TarInfo("./deployment.py")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./escape")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../.."
        tf.addfile(link)

    assert_failed(builder.build(archive, "b1"), "'./escape'")


def test_an_archive_unpacking_past_the_size_cap_fails(
    tmp_path: Path, builder: Builder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builds, "MAX_UNPACKED_BYTES", 10_000)  # the real 2 GiB cap, scaled down
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("deployment.py", NOOP)
        zf.writestr("zeros.bin", b"\0" * 100_000)

    assert archive.stat().st_size < 10_000
    assert_failed(builder.build(archive, "b1"), "the archive unpacks to more than")


def test_requirements_that_cannot_install_fail_with_the_installer_output_naming_the_package(
    tmp_path: Path, builder: Builder
) -> None:
    result = builder.build(zip_of(tmp_path, requirements="modelbay-no-such-package-xyz==1.0\n"), "b1")

    assert_failed(result, "modelbay-no-such-package-xyz", "could not install requirements.txt")
    assert [p.name for p in (tmp_path / "data" / "envs").iterdir()] == []  # no half-built env left


def test_a_small_pure_python_requirement_is_installed_and_importable(tmp_path: Path, builder: Builder) -> None:
    code = NOOP + "\nimport six\n"

    result = builder.build(zip_of(tmp_path, code, requirements="six\n"), "b1")

    assert result.ok, result.log
    assert result.python is not None
    subprocess.run([result.python, "-c", "import six"], check=True)


def test_builds_run_sandboxed_and_each_cache_key_has_a_package_cache_of_its_own(tmp_path: Path) -> None:
    builder = Builder(tmp_path / "data", Bubblewrap())
    secret = tmp_path / "data" / "admin_token"
    secret.write_text("not for builds")
    prying = NOOP + f"""
import os
assert not os.path.exists({str(secret)!r}), "the data dir is visible to the import check"
assert os.getuid() == 65534
"""

    first = builder.build(zip_of(tmp_path, prying, requirements="six\n"), "b1", cache_key="project-a")

    assert first.ok, first.log
    cache = tmp_path / "data" / "uv-cache"
    assert any((cache / "project-a").iterdir())  # six was downloaded into project-a's own cache
    assert not (cache / "project-b").exists()
    assert not list((tmp_path / "data" / "scratch").iterdir())  # the build's scratch dir is gone


def test_an_import_error_in_deployment_py_fails_with_the_traceback(tmp_path: Path, builder: Builder) -> None:
    result = builder.build(zip_of(tmp_path, IMPORT_ERROR), "b1")

    assert_failed(result, "Traceback", "ModuleNotFoundError", "modelbay_no_such_module_xyz", "deployment.py")


def test_deployment_py_without_a_deployment_class_fails(tmp_path: Path, builder: Builder) -> None:
    assert_failed(builder.build(zip_of(tmp_path, "x = 1\n"), "b1"), "no class 'Deployment'")


def test_code_in_the_libraries_folder_is_importable(tmp_path: Path, builder: Builder) -> None:
    src = make_package_dir(
        tmp_path, "import helper\n" + NOOP, extra_files={"libraries/helper.py": "VALUE = 1\n"}
    )

    assert builder.build(make_zip(src, tmp_path / "pkg.zip"), "b1").ok


def test_a_deployment_with_a_requests_method_is_reported_as_such(tmp_path: Path, builder: Builder) -> None:
    result = builder.build(zip_of(tmp_path, BATCH), "b1")

    assert result.ok, result.log
    assert result.has_request_method and result.has_requests_method


def test_the_same_requirements_reuse_one_environment(tmp_path: Path, builder: Builder) -> None:
    first = builder.build(zip_of(tmp_path, requirements=""), "b1")
    started = time.perf_counter()
    second = builder.build(zip_of(tmp_path, requirements="# only a comment\n\n"), "b2")
    reused_s = time.perf_counter() - started

    assert first.ok and second.ok, first.log + second.log
    assert first.python == second.python
    assert len(list((tmp_path / "data" / "envs").iterdir())) == 1
    assert "Reusing environment" in second.log
    assert reused_s < 2.0  # ~0.1 s on an idle machine; generous for loaded CI


def test_concurrent_builds_with_the_same_requirements_create_one_environment(
    tmp_path: Path, builder: Builder
) -> None:
    archive = zip_of(tmp_path)
    results: dict[str, BuildResult] = {}

    def run(build_id: str) -> None:
        results[build_id] = builder.build(archive, build_id)

    threads = [threading.Thread(target=run, args=(f"b{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert all(r.ok for r in results.values())
    assert len({r.python for r in results.values()}) == 1
    assert len(list((tmp_path / "data" / "envs").iterdir())) == 1
    assert sum("Creating environment" in r.log for r in results.values()) == 1


def test_requirements_are_normalised_ignoring_comments_blanks_and_order() -> None:
    a = "numpy==1.26  # pinned\n\n# comment\nsix\n"
    b = "six\nnumpy==1.26\n"

    assert normalise_requirements(a) == normalise_requirements(b) == ["numpy==1.26", "six"]


def test_different_requirements_get_different_environments(tmp_path: Path, builder: Builder) -> None:
    first = builder.build(zip_of(tmp_path), "b1")
    second = builder.build(zip_of(tmp_path, requirements="six\n"), "b2")

    assert first.ok and second.ok, second.log
    assert first.python != second.python


def test_an_environment_build_past_the_timeout_is_killed_and_fails(tmp_path: Path) -> None:
    builder = Builder(tmp_path / "data", Bubblewrap(), build_timeout_s=0.0)

    result = builder.build(zip_of(tmp_path), "b1")

    assert_failed(result, "took longer than 0 s")
    assert [p.name for p in (tmp_path / "data" / "envs").iterdir()] == []


def test_a_rebuild_under_the_same_id_replaces_the_unpacked_code(tmp_path: Path, builder: Builder) -> None:
    builder.build(zip_of(tmp_path, NOOP), "b1")
    result = builder.build(zip_of(tmp_path, PLAIN), "b1")

    assert result.ok and result.package_dir is not None
    assert "Echoes plain input" in (result.package_dir / "deployment.py").read_text()


def test_an_empty_requirements_package_builds_fast_on_a_cold_environment(tmp_path: Path, builder: Builder) -> None:
    archive = zip_of(tmp_path)

    started = time.perf_counter()
    result = builder.build(archive, "b1")
    cold_s = time.perf_counter() - started

    assert result.ok and "Creating environment" in result.log
    assert cold_s < 5.0  # ~0.15 s on an idle machine; generous for loaded CI
