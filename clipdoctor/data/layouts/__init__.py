"""One module per dataset layout of DESIGN §2; importing this package registers them all in
`FORMATS` (`clipdoctor.data.layouts.registry`), in the order the layouts are documented.

Each layout module holds one small "lister" `(root, fold) -> _Listing` decorated with
`@_register(name)`, plus what only that layout needs (its annotation-file parsers, its part of
format detection). Helpers several listers share are in `files.py`.
"""

from clipdoctor.data.layouts import (folder, ucf101, hmdb51, kinetics,  # noqa: F401 (register)
                                     ssv2, manifest, npz)
