/* Version tags of a type and of a dict, for the compiled engine's cached
 * hook decisions.
 *
 * CPython gives a class a new version tag whenever the class or one of its
 * bases is modified (an attribute assigned or deleted): a decision taken
 * from the class's attributes stays valid while the tag is unchanged.
 * Returns 0 when the type has no valid tag at the moment.
 */
#ifndef FASTSOCK_TYPE_VERSION_H
#define FASTSOCK_TYPE_VERSION_H

#include <Python.h>

static inline unsigned int fs_type_version(PyTypeObject *tp)
{
#if PY_VERSION_HEX >= 0x030D0000
    /* 3.13 no longer sets Py_TPFLAGS_VALID_VERSION_TAG: a tag of 0 is the
       invalid one, and a modified type's tag is set to 0. */
    return tp->tp_version_tag;
#else
    if (!PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
    return tp->tp_version_tag;
#endif
}

/* A dict's version tag (PEP 509): CPython 3.10 and 3.11 give the dict a
 * new one on every change, so a look at its keys stays valid while the tag
 * is unchanged.  Returns 0 where no tag can be relied on (later versions
 * deprecate or drop it): the caller then looks at the keys every time.
 */
static inline unsigned long long fs_dict_version(PyObject *dict)
{
#if PY_VERSION_HEX < 0x030C0000
    return ((PyDictObject *)dict)->ma_version_tag;
#else
    (void)dict;
    return 0;
#endif
}

#endif /* FASTSOCK_TYPE_VERSION_H */
