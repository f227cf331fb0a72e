"""``install()``: make ``import socketserver`` give fastsock.

``install()`` puts the fastsock package itself in
``sys.modules["socketserver"]``.  fastsock's ``__all__``, classes and hooks
mirror the standard module's, so every module imported from then on --
http.server, xmlrpc.server, wsgiref.simple_server, logging.config,
werkzeug.serving, or the program's own -- builds its servers and handlers on
fastsock without knowing it.

A module imported *before* install() keeps what it already holds: the
standard module object, or classes derived from the standard classes.
Nothing can re-base a class after the fact, and patching some names but not
others would leave both implementations mixed in one class hierarchy, so
install() patches nothing in place.  It finds those modules instead (one
bound to the replaced module, or holding a class derived from one of that
module's classes) and names them in a ``RuntimeWarning``, so that the program
can call install() earlier.

``uninstall()`` puts back whatever ``sys.modules`` held before install(), or
removes the entry when the standard module had not been imported, so that the
next import loads it afresh.  Modules imported in between keep fastsock's
classes.

Both hold a lock: call them from any thread, before servers start.
"""

import sys
import threading
import warnings

_NAME = "socketserver"

_lock = threading.Lock()
# What sys.modules held under _NAME before install(): the module fastsock
# replaces, or None when nothing had imported it yet.
_replaced = None


def _package():
    return sys.modules[__package__]


def is_installed():
    """Whether ``import socketserver`` gives fastsock now."""
    return sys.modules.get(_NAME) is _package()


def install():
    """Make ``import socketserver`` give fastsock from now on.

    Idempotent.  Warns, naming them, about modules that imported the
    replaced module earlier and so keep its classes.
    """
    global _replaced
    with _lock:
        if is_installed():
            return
        replaced = sys.modules.get(_NAME)
        holders = [] if replaced is None else _modules_holding(replaced)
        _replaced = replaced
        sys.modules[_NAME] = _package()
    # Outside the lock: a warning filter may run arbitrary code, or raise.
    if holders:
        warnings.warn(
            f"fastsock.install(): {_NAME} was imported before install() "
            f"by: {', '.join(holders)}; these keep its classes, not "
            f"fastsock's.  Call fastsock.install() before importing them.",
            RuntimeWarning, stacklevel=2)


def uninstall():
    """Give ``import socketserver`` back what it gave before install().

    Idempotent; does nothing unless fastsock is installed.
    """
    global _replaced
    with _lock:
        if not is_installed():
            return
        if _replaced is None:
            del sys.modules[_NAME]
        else:
            sys.modules[_NAME] = _replaced
        _replaced = None


def _modules_holding(replaced):
    """Sorted names of the modules that hold ``replaced`` or its classes.

    A module counts when one of its globals is ``replaced`` itself (``import
    socketserver``) or a class derived from a class defined in ``replaced``
    (``from socketserver import TCPServer``, or a subclass).  fastsock's own
    modules are left out, and a module known by several names (``__main__``
    is also ``__mp_main__`` under multiprocessing) is named once.
    """
    own_classes = tuple(
        value for value in vars(replaced).values()
        if isinstance(value, type) and value.__module__ == replaced.__name__)
    own_prefix = __package__ + "."
    names_by_module = {}
    for name, module in list(sys.modules.items()):
        try:
            if (module is replaced or name == __package__
                    or name.startswith(own_prefix)):
                continue
            if _holds(vars(module), replaced, own_classes):
                names_by_module.setdefault(id(module), []).append(name)
        except Exception:  # an odd entry in sys.modules: not ours to judge
            continue
    return sorted(min(names) for names in names_by_module.values())


def _holds(namespace, replaced, classes):
    for value in list(namespace.values()):
        if value is replaced:
            return True
        # type(value), not isinstance(): lazy proxies answer isinstance()
        # by loading (or failing to load) what they stand for.
        if issubclass(type(value), type) and issubclass(value, classes):
            return True
    return False
