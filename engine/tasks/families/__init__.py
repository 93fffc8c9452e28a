"""The task families, one module each; importing this package imports every module here, which registers them.

Each module holds its family's synthetic generator (``gen_<family>``), its natural-language generator
(``nl_<family>``) and their helpers, and registers a :class:`engine.tasks.registry.Family` under the
family's name: adding a family is adding one module here. Helpers several families share are in
:mod:`engine.tasks.families.base`. The committed suite's order is ``engine.tasks.FAMILIES``, not import order.
"""

import importlib
import pkgutil

from engine.tasks.families.base import Item

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
    importlib.import_module(f"{__name__}.{_module}")

__all__ = ["Item"]
