"""One call scope: how every technique (SoftPAG, structured cross-attention, UpFusion's scene tokens, the SoftPAG
guider) puts its attention processors, hooks and method wrappers on a pipeline's modules for one call, hands the
call's state to them, and takes everything off again. Modelled on diffusers' hook registry
(`diffusers.hooks.HookRegistry`: a registry per module, named hooks with `pre_forward` / `post_forward`).

Lifecycle of one call (the only one; every technique follows it):
1. The technique builds its per-call state object (`_SoftPAGCall`, `StructuredState`, `SceneCall`, ...) and a
   `CallScope(state, parameter, error)`. The state's class says whose it is: it is found by class.
2. It declares what the call needs: `scope.processors(model, {module name: processor}, replaceable)`,
   `scope.hook(module, key, hook)` (a `ScopeHook`), `scope.around(obj, method, transform)`.
3. `with scope:` (or `open()` ... `close()`) installs them, in that order, and makes `state` a running state in
   this thread / task (a context variable). Nothing changes if any part is refused: a module holding a
   processor the technique does not reproduce (xformers, an IP-Adapter: named in the error with `parameter`), or
   a method another running call has wrapped (a shared scheduler).
4. During the call the installed pieces get the state passed: hooks (`ScopeHook.serves`: the state class they
   act on) as their first argument, wrapped methods' transforms likewise; processors (whose signature diffusers
   fixes) ask `current(StateClass)`. Outside any scope with such a state it is None and they behave as the plain
   processors (a hook is skipped).
5. On exit, normal or by an exception, everything is taken off in reverse order and the state stops being
   current. On a normal exit a processor that something replaced during the call (xformers enabled, an IP-Adapter
   loaded) raises after the originals are back: the result did not get the technique.

Calls at once on shared modules (pipelines made with `from_pipe`, used from several threads): an installation is
shared and reference-counted per module (`ScopeRegistry`, kept on the module as diffusers keeps its registry):
a processor of the same class and `share_key`, or a hook of the same key, is installed once by the first call and
removed by the last one out. That is why hooks and processors never hold per-call state themselves. Scopes of
one technique opened in one thread nest (the innermost is current) and may close in any order.
A processor's own short-lived state (the generic adapter's running site) goes through `running(state)`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from guidance.config import GuidanceError

__all__ = ["CallScope", "ScopeHook", "ScopeRegistry", "StepWindow", "current", "running"]

T = TypeVar("T")

# -- the running states of this thread / task ------------------------------------------------------------------


class _Entry:
    """One running state on the context's stack (removed by identity, so scopes may close in any order)."""

    __slots__ = ("state",)

    def __init__(self, state: object):
        self.state = state


_RUNNING: ContextVar[tuple[_Entry, ...]] = ContextVar("guidance_scope", default=())


def current(kind: type[T]) -> T | None:
    """The innermost running state of class `kind` (or a subclass) in this thread / task, or None."""
    for entry in reversed(_RUNNING.get()):
        if isinstance(entry.state, kind):
            return entry.state
    return None


def _push(state: object) -> _Entry:
    entry = _Entry(state)
    _RUNNING.set((*_RUNNING.get(), entry))
    return entry


def _pop(entry: _Entry) -> None:
    _RUNNING.set(tuple(e for e in _RUNNING.get() if e is not entry))


@contextmanager
def running(state: T) -> Iterator[T]:
    """`state` running for the body, nothing installed (a processor's own call, or processors run by hand)."""
    entry = _push(state)
    try:
        yield state
    finally:
        _pop(entry)


# -- per-module registry: shared, reference-counted installations ---------------------------------------------

_LOCK = threading.RLock()


@dataclass
class _Installed:
    processor: object
    original: object
    count: int = 0


@dataclass
class ScopeRegistry:
    """What the running scopes have installed on one module: its processor (with the one it replaced) and its
    named hooks (with their torch handles), each with the number of scopes using it."""

    processor: _Installed | None = None
    hooks: dict[str, list] = field(default_factory=dict)  # key -> [count, handles]

    @classmethod
    def of(cls, module: torch.nn.Module) -> ScopeRegistry:
        """The module's registry, created on first use (call with the lock held)."""
        registry = module.__dict__.get("_guidance_scope")
        if registry is None:
            registry = module.__dict__["_guidance_scope"] = cls()
        return registry

    @staticmethod
    def drop_if_empty(module: torch.nn.Module) -> None:
        registry = module.__dict__.get("_guidance_scope")
        if registry is not None and registry.processor is None and not registry.hooks:
            del module.__dict__["_guidance_scope"]


class ScopeHook:
    """A hook of one technique on a module, registered once for all its running calls (so it holds no per-call
    state): each method gets the running call's state (the innermost of class `serves`) first, and is skipped
    where none runs. `always_call`: `post_forward` runs also when the forward raises (torch's `always_call`)."""

    serves: type = object
    always_call = False

    def pre_forward(self, state, module, args, kwargs):
        """Before the forward: new (args, kwargs), or None to leave them."""
        return None

    def post_forward(self, state, module, args, kwargs, output):
        """After the forward: the output to use."""
        return output

    def register(self, module: torch.nn.Module, prepend: bool = False) -> list:
        """Register torch hooks on `module` that pass the running state of class `serves` (none: skipped)."""
        handles, kind = [], self.serves
        if type(self).pre_forward is not ScopeHook.pre_forward:

            def pre(module, args, kwargs):
                state = current(kind)
                return None if state is None else self.pre_forward(state, module, args, kwargs)

            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True, prepend=prepend))
        if type(self).post_forward is not ScopeHook.post_forward:

            def post(module, args, kwargs, output):
                state = current(kind)
                return output if state is None else self.post_forward(state, module, args, kwargs, output)

            handles.append(
                module.register_forward_hook(
                    post, with_kwargs=True, always_call=self.always_call, prepend=prepend
                )
            )
        return handles


# -- the scope of one call ------------------------------------------------------------------------------------


class CallScope:
    """One call: its state, and the processors, hooks and method wrappers it installs (see the module docstring for
    the lifecycle). `parameter` and `error` name the call argument and the exception of a refusal."""

    def __init__(self, state: object, parameter: str, error: type[Exception] = GuidanceError):
        self.state, self.parameter, self.error = state, parameter, error
        self._plan: list[tuple] = []
        self._undo: list[Callable[[], None]] = []
        self._checks: list[Callable[[], None]] = []
        self._entry: _Entry | None = None

    # -- what the call needs (declared before it opens) ---------------------------------------------------

    def processors(
        self, model: torch.nn.Module, processors: Mapping[str, object], replaceable: Iterable[str]
    ):
        """Processors ({module name: processor}) on `model`'s modules, over processors of the `replaceable`
        classes only (its own class included); one of the same class and `share_key` installed by another
        running call is shared instead."""
        self._plan.append(("processors", model, dict(processors), tuple(replaceable)))
        return self

    def hook(self, module: torch.nn.Module, key: str, hook: ScopeHook, prepend: bool = False):
        """`hook` on `module` under `key`; a hook with that key already there (another running call's) is shared."""
        self._plan.append(("hook", module, key, hook, prepend))
        return self

    def around(self, obj: object, method: str, transform: Callable):
        """`obj.method(first, ...)` receives `transform(state, first)` instead of `first` during the call; a method
        another running call has wrapped (an instance attribute already there) is refused."""
        self._plan.append(("around", obj, method, transform))
        return self

    # -- open and close ---------------------------------------------------------------------------------

    def open(self) -> object:
        """Install everything declared (nothing stays installed if a part is refused); the state becomes current."""
        try:
            for kind, *spec in self._plan:
                getattr(self, f"_install_{kind}")(*spec)
        except BaseException:
            self._take_off()
            raise
        self._entry = _push(self.state)
        return self.state

    def close(self, check: bool = True) -> None:
        """Take everything off (reverse order) and stop the state being current; with `check`, then raise if a
        processor of this call was replaced while it ran."""
        if self._entry is not None:
            _pop(self._entry)
            self._entry = None
        replaced = [name for test in self._checks for name in test()] if check else []
        self._checks = []
        self._take_off()
        if replaced:
            raise self.error(
                f"{self.parameter}: the attention processors of {replaced} were replaced during the call (e.g. by "
                "enable_xformers_memory_efficient_attention or an IP-Adapter loader); the feature was not applied"
            )

    def __enter__(self):
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(check=exc_type is None)

    def _take_off(self) -> None:
        while self._undo:
            self._undo.pop()()

    # -- installers ---------------------------------------------------------------------------------------

    def _install_processors(self, model, processors: dict, allowed: tuple) -> None:
        modules = {name: model.get_submodule(name) for name in processors}
        with _LOCK:
            plan = {}
            for name, processor in processors.items():
                module = modules[name]
                installed = ScopeRegistry.of(module).processor
                if installed is not None and module.processor is installed.processor:
                    if _shares(installed.processor, processor):
                        plan[name] = installed
                        continue
                kind = type(module.processor).__name__
                if kind not in allowed:
                    for module in modules.values():
                        ScopeRegistry.drop_if_empty(module)
                    hint = (
                        " (call pipe.disable_xformers_memory_efficient_attention())"
                        if "XFormers" in kind
                        else ""
                    )
                    raise self.error(
                        f"{self.parameter}: {name} uses {kind}, which would be silently dropped; only "
                        f"{', '.join(allowed)} can be replaced{hint}. IP-Adapter, xformers and fused projections "
                        "are not supported on these layers."
                    )
                plan[name] = None
            held = {}
            for name, installed in plan.items():
                module = modules[name]
                if installed is None:
                    installed = _Installed(processors[name], module.processor)
                    _keep_backend(installed.original, installed.processor)
                    module.set_processor(installed.processor)
                    ScopeRegistry.of(module).processor = installed
                installed.count += 1
                held[name] = installed

        def release() -> None:
            with _LOCK:
                for name, installed in held.items():
                    installed.count -= 1
                    if installed.count == 0:
                        modules[name].set_processor(installed.original)
                        ScopeRegistry.of(modules[name]).processor = None
                        ScopeRegistry.drop_if_empty(modules[name])

        self._undo.append(release)
        self._checks.append(lambda: [n for n, i in held.items() if modules[n].processor is not i.processor])

    def _install_hook(self, module, key: str, hook: ScopeHook, prepend: bool) -> None:
        with _LOCK:
            hooks = ScopeRegistry.of(module).hooks
            if key not in hooks:
                hooks[key] = [0, hook.register(module, prepend)]
            entry = hooks[key]
            entry[0] += 1

        def release() -> None:
            with _LOCK:
                entry[0] -= 1
                if entry[0] == 0:
                    for handle in entry[1]:
                        handle.remove()
                    del ScopeRegistry.of(module).hooks[key]
                    ScopeRegistry.drop_if_empty(module)

        self._undo.append(release)

    def _install_around(self, obj, method: str, transform: Callable) -> None:
        if method in vars(obj):
            raise self.error(
                f"{self.parameter}: this {type(obj).__name__} is in use by another running call; give each "
                "concurrent pipeline its own scheduler (e.g. "
                "HeadHunterPipeline.from_pipe(pipe, scheduler=copy.deepcopy(pipe.scheduler)))"
            )
        original, state = getattr(obj, method), self.state

        def wrapped(first, *args, **kwargs):
            return original(transform(state, first), *args, **kwargs)

        setattr(obj, method, wrapped)
        self._undo.append(lambda: delattr(obj, method))


def _keep_backend(original: object, processor: object) -> None:
    """Carry the user's attention backend and parallel config (`set_attention_backend`) to our processor."""
    for attribute in ("_attention_backend", "_parallel_config"):
        if hasattr(processor, attribute) and hasattr(original, attribute):
            setattr(processor, attribute, getattr(original, attribute))


def _shares(installed: object, wanted: object) -> bool:
    """Two processors are interchangeable when they are of one class with the same non-None `share_key`."""
    key = getattr(installed, "share_key", None)
    return type(installed) is type(wanted) and key is not None and key == getattr(wanted, "share_key", None)


# -- the step window ------------------------------------------------------------------------------------------


class StepWindow:
    """Counts one pipeline call's main denoiser evaluations and tells whether each lies in [start, stop).

    The fraction is evaluations so far over those the scheduler plans (`len(scheduler.timesteps)`; Heun-type
    schedulers plan two per step), so a window means the same part of the schedule for every scheduler."""

    def __init__(self, scheduler, start: float = 0.0, stop: float = 1.0):
        self.scheduler, self.start, self.stop = scheduler, start, stop
        self.calls = 0

    def advance(self) -> bool:
        """Count one main evaluation; True when it lies inside the window."""
        fraction = self.calls / max(len(self.scheduler.timesteps), 1)
        self.calls += 1
        return self.start <= fraction < self.stop
