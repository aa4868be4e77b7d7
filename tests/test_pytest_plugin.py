"""memable's pytest plugin in a project of its own (run with ``pytester``)."""

from __future__ import annotations

import pytest

PLUGIN = ["-p", "anyio", "-p", "memable.testing.pytest_plugin"]
QUIET = ["-W", "error", "-W", "ignore::pytest.PytestAssertRewriteWarning", "-q"]


@pytest.fixture(autouse=True)
def only_the_plugins_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The inner runs load memable's plugin and anyio's only (faster, and independent of
    what else is installed)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")


def test_a_storage_kind_of_the_project(pytester: pytest.Pytester) -> None:
    """A project adds a storage kind to STORAGES and lists it in memable_storages; its own
    ``anyio_backend`` and ``make_storage`` fixtures keep working beside the plugin's."""
    pytester.makeini("[pytest]\nmemable_storages = memory wrapped\n")
    pytester.makeconftest(
        """
        import pytest
        from memable.storage import MemoryStorage
        from memable.testing import pytest_plugin

        made = []

        def wrapped(tmp_path):
            shared = MemoryStorage()
            def factory():
                made.append(tmp_path)
                return shared
            return factory

        pytest_plugin.STORAGES["wrapped"] = wrapped

        @pytest.fixture(params=["trio"])
        def anyio_backend(request):
            return request.param

        @pytest.fixture
        def make_storage():
            return "the project's own"
        """
    )
    pytester.makepyfile(
        test_kinds="""
        import pytest
        import memable

        pytestmark = pytest.mark.anyio

        @memable.workflow("one")
        async def one(ctx: memable.Context) -> int:
            return 1

        async def test_engine(memable_engine, memable_storage_kind, anyio_backend, make_storage):
            memable_engine.register(one)
            assert await memable_engine.run(one) == 1
            assert anyio_backend == "trio"
            assert make_storage == "the project's own"

        def test_made():
            from conftest import made
            assert len(made) == 1  # the wrapped kind made the second engine's storage
        """
    )
    result = pytester.runpytest(*PLUGIN, *QUIET)
    result.assert_outcomes(passed=3)
    result.stdout.no_fnmatch_line("*sqlite*")


def test_an_unknown_storage_kind_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nmemable_storages = memory cassandra\n")
    pytester.makepyfile(test_x="def test_x(memable_storage):\n    pass\n")
    result = pytester.runpytest(*PLUGIN, *QUIET)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*unknown storage kinds*cassandra*"])


def test_postgres_without_a_postgres_storage_says_so(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MEMABLE_TEST_POSTGRES set, the postgres kind fails clearly when memable has no
    PostgresStorage: it never passes silently."""
    import memable.storage

    monkeypatch.setattr(memable.storage, "PostgresStorage", None, raising=False)
    monkeypatch.setenv("MEMABLE_TEST_POSTGRES", "postgresql://nowhere/none")
    pytester.makeini("[pytest]\nmemable_storages = postgres\n")
    pytester.makepyfile(test_x="def test_x(memable_storage):\n    pass\n")
    result = pytester.runpytest(*PLUGIN, *QUIET)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*this memable has no PostgresStorage*"])
