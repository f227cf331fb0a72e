# C declarations of includes/type_version.h.

cdef extern from "type_version.h":
    unsigned int fs_type_version(type tp)
    unsigned long long fs_dict_version(dict d)
