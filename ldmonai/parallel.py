"""Where batch tasks run: in this process, in local worker processes, or on a Dask cluster.

``ldmonai prep convert`` (one task per DICOM series) and ``ldmonai prep run`` (one task per
case) hand their task function to :func:`task_executor` and read results with :func:`completed` (results as tasks finish), whichever backend runs them:

- ``workers=1``, no scheduler: an executor that runs each task when it is submitted, in this
  process (no pickling, no start-up cost);
- ``workers=N``: a :class:`~concurrent.futures.ProcessPoolExecutor`. Each worker asks the kernel
  to kill it when its parent dies (``PR_SET_PDEATHSIG``), so ``kill -9`` on the command leaves
  no orphaned workers behind (``tests/test_convert_engine.py`` checks it);
- ``scheduler="local"``: a ``distributed.LocalCluster`` with N single-threaded worker processes;
- ``scheduler="tcp://host:8786"``: an existing Dask scheduler (for example one that
  ``dask-jobqueue`` started on SLURM). Workers need ldmonai installed and the input and output
  folders on a shared file system.

The Dask paths use ``Client.get_executor()``, dask.distributed's own
:class:`concurrent.futures.Executor`; ldmonai writes no scheduler of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator

from ldmonai.errors import UsageError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2 ms)
if TYPE_CHECKING:
    from concurrent.futures import Executor, Future


def _load_prctl():
    """libc's ``prctl``, looked up once in the parent: ``die_with_parent`` also runs as a
    ``preexec_fn`` between fork and exec, where importing a module or calling ``dlopen`` can
    deadlock on a lock that another thread (the threads that drive dcm2niix) held at fork time."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent() -> None:
    """Have the kernel send SIGKILL to this process when its parent exits (Linux; else a no-op).

    Used as the worker initialiser and as ``preexec_fn`` of engine subprocesses, so that a
    killed command takes its whole process tree with it.
    """
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _worker_init(initializer: Callable | None, initargs: tuple) -> None:
    die_with_parent()
    if initializer is not None:
        initializer(*initargs)


class InlineExecutor:
    """Runs each task at submission, in this process; exceptions land in the future. (An
    executor by duck typing: ``concurrent.futures`` loads only when a task is submitted, since
    its import, with ``logging``, costs a one-worker conversion 4 ms.)"""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass

    def submit(self, fn, /, *args, **kwargs) -> Future:
        from concurrent.futures import Future

        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
            future.set_exception(exc)
        return future


@contextlib.contextmanager
def task_executor(workers: int = 1, scheduler: str | None = None, initializer: Callable | None = None,
                  initargs: tuple = ()) -> Iterator[Executor]:
    """An executor for batch tasks (see the module docstring).

    Args:
        workers: local processes, or the LocalCluster's worker count with ``scheduler="local"``.
        scheduler: None, ``"local"`` or a Dask scheduler address (``tcp://host:port``).
        initializer: run once in every worker before its first task (and here for ``workers=1``).
        initargs: its arguments.
    """
    if scheduler:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise UsageError("--scheduler needs dask.distributed, which is not installed",
                             fix="pip install 'ldmonai[dask]'") from None
        with contextlib.ExitStack() as stack:
            # distributed writes OMP_NUM_THREADS=1 (and MKL, OpenBLAS, PYTHONHASHSEED, ...) into this
            # process's environment for its workers; restored afterwards, or every later subprocess
            # (a bundle run, for one) would silently run single-threaded with other numerics.
            saved = dict(os.environ)
            stack.callback(lambda: (os.environ.clear(), os.environ.update(saved)))
            if scheduler == "local":
                cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                           host="127.0.0.1", dashboard_address=None))
                client = stack.enter_context(Client(cluster))
            else:
                try:
                    client = stack.enter_context(Client(scheduler, timeout="20s"))
                except (OSError, TimeoutError, ValueError) as exc:
                    raise UsageError(f"cannot reach the Dask scheduler {scheduler} ({exc})",
                                     fix="start it first (dask scheduler / dask-jobqueue) or use --scheduler local") from None
            if initializer is not None:
                client.run(initializer, *initargs)
            yield client.get_executor(pure=False)
        return
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield InlineExecutor()
        return
    from concurrent.futures import ProcessPoolExecutor  # imports multiprocessing: only when needed

    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=(initializer, initargs)) as pool:
        yield pool


def threaded(fn: Callable, arg_tuples: Iterable[tuple], workers: int) -> Iterator:
    """``fn(*args)`` for each args tuple on ``workers`` threads, yielded as tasks finish; an
    exception in a task is raised here. For tasks whose work runs in child processes
    (dcm2niix), where threads need no fork and no pickling. (Plain threads and a queue rather
    than a ThreadPoolExecutor: ``concurrent.futures`` imports ``logging``, 4 ms of the 0.1-s
    dcm_qa_nih conversion.)"""
    import queue
    import threading

    tasks = list(arg_tuples)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    done: queue.SimpleQueue = queue.SimpleQueue()
    for args in tasks:
        todo.put(args)

    def work():
        while True:
            try:
                args = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((True, fn(*args)))
            except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                done.put((False, exc))

    threads = [threading.Thread(target=work, daemon=True) for _ in range(min(workers, len(tasks)))]
    for thread in threads:
        thread.start()
    for _ in tasks:
        ok, value = done.get()
        if not ok:
            raise value
        yield value


def completed(pool: Executor, fn: Callable, arg_tuples: Iterable[tuple]) -> Iterator:
    """``fn(*args)`` for each args tuple, yielded as tasks finish (in order for the inline executor,
    which then runs each task only when the caller asks for it, so progress bars move)."""
    if isinstance(pool, InlineExecutor):
        for args in arg_tuples:
            yield fn(*args)
        return
    from concurrent.futures import as_completed

    futures = [pool.submit(fn, *args) for args in arg_tuples]
    for future in as_completed(futures):
        yield future.result()
