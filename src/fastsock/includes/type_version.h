/* A type's version tag, for the compiled engine's cached hook decisions.
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
    if (!PyType_HasFeature(tp, Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
    return tp->tp_version_tag;
}

#endif /* FASTSOCK_TYPE_VERSION_H */
