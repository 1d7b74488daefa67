/* The module aegis_mw.asgi._hotpath: the HttpPath type, and the clock it reads,
 * for the tests. The overview is in hotpath.h. */
#include "hotpath.h"

static PyObject *
module_monotonic(PyObject *module, PyObject *unused)
{
#if AEGIS_NATIVE_MONOTONIC
    return PyFloat_FromDouble(aegis_native_monotonic());
#else
    PyErr_SetString(PyExc_NotImplementedError, "no native monotonic clock on this platform");
    return NULL;
#endif
}

static PyMethodDef module_methods[] = {
    {"monotonic", module_monotonic, METH_NOARGS,
     "The clock the compiled path reads when none is given (time.perf_counter's)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aegis_mw.asgi._hotpath",
    .m_doc = "The compiled HTTP request path of AegisMiddleware.",
    .m_size = -1,
    .m_methods = module_methods,
};

struct aegis_strings aegis_str;
PyObject *aegis_partial;

static const struct {
    PyObject **slot;
    const char *text;
} STRINGS[] = {
    {&aegis_str.type, "type"},
    {&aegis_str.body, "body"},
    {&aegis_str.more_body, "more_body"},
    {&aegis_str.status, "status"},
    {&aegis_str.count, "count"},
    {&aegis_str.path, "path"},
    {&aegis_str.method, "method"},
    {&aegis_str.client, "client"},
    {&aegis_str.route, "route"},
    {&aegis_str.get, "get"},
    {&aegis_str.wake_flusher, "wake_flusher"},
    {&aegis_str.refuse, "refuse"},
    {&aegis_str.forwarded, "forwarded"},
    {&aegis_str.throw, "throw"},
    {&aegis_str.close, "close"},
    {&aegis_str.empty, ""},
    {&aegis_str.queue_failed, "_queue_failed"},
    {&aegis_str.settle_unfinished, "_settle_unfinished"},
    {&aegis_str.internal_error, "_internal_error"},
};

PyMODINIT_FUNC
PyInit__hotpath(void)
{
    for (size_t i = 0; i < sizeof STRINGS / sizeof STRINGS[0]; i++) {
        *STRINGS[i].slot = PyUnicode_InternFromString(STRINGS[i].text);
        if (*STRINGS[i].slot == NULL) {
            return NULL;
        }
    }
    PyObject *functools = PyImport_ImportModule("functools");
    if (functools == NULL) {
        return NULL;
    }
    aegis_partial = PyObject_GetAttrString(functools, "partial");
    Py_DECREF(functools);
    if (aegis_partial == NULL) {
        return NULL;
    }
    if (PyType_Ready(&AegisItemType) < 0 || PyType_Ready(&AegisExchangeType) < 0
        || PyType_Ready(&AegisSenderType) < 0
        || PyType_Ready(&AegisReceiverType) < 0 || PyType_Ready(&AegisHttpPathType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&hotpath_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "HttpPath", (PyObject *)&AegisHttpPathType) < 0
        || PyModule_AddObjectRef(module, "HttpItem", (PyObject *)&AegisItemType) < 0
        || PyModule_AddIntConstant(module, "NATIVE_MONOTONIC", AEGIS_NATIVE_MONOTONIC) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
