/* The module aegis_mw._hotpath: the HttpPath (ASGI), WsgiPath and DjangoPath
 * types, and the clock they read, for the tests. The overview is in hotpath.h. */
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
    {"call_directly", aegis_call_directly, METH_O,
     "Call instances of this AegisMiddleware class through their compiled path (asgi_path.c)."},
    {"monotonic", module_monotonic, METH_NOARGS,
     "The clock the compiled path reads when none is given (time.perf_counter's)."},
    {"finalize_items", (PyCFunction)(void (*)(void))aegis_finalize_items, METH_FASTCALL,
     "The finalizer's loop for clean compiled items (aegis_mw.core.finalize)."},
    {"fold_items", (PyCFunction)(void (*)(void))aegis_fold_items, METH_FASTCALL,
     "The realtime ring's and per-label totals' fold for compiled items (aegis_mw.core.aggregates)."},
    {"sqlite_rows_init", (PyCFunction)(void (*)(void))aegis_sqlite_rows_init, METH_FASTCALL,
     "Find SQLite's C functions in the library the sqlite3 module uses (aegis_mw.sinks.sqlite_rows)."},
    {"sqlite_filename", aegis_sqlite_filename, METH_O,
     "The main database file of an sqlite3.Connection, read through its handle."},
    {"pg_copy_rows", (PyCFunction)(void (*)(void))aegis_pg_copy_rows, METH_FASTCALL,
     "Records in PostgreSQL's binary COPY tuple format (aegis_mw.sinks.postgres_copy)."},
    {"sqlite_insert_rows", (PyCFunction)(void (*)(void))aegis_sqlite_insert_rows, METH_FASTCALL,
     "Insert records through an sqlite3.Connection's handle, the GIL released (aegis_mw.sinks.sqlite_rows)."},
    {"sqlite_rows_cache", aegis_sqlite_rows_cache, METH_NOARGS,
     "An empty cache of sqlite_insert_rows's prepared statements (aegis_mw.sinks.sqlite_rows)."},
    {"column_range", (PyCFunction)(void (*)(void))aegis_column_range, METH_FASTCALL,
     "(min, max) of a column over records[start:stop], or None for Python (aegis_mw.sinks.sqlite_blocks)."},
    {"take_left", (PyCFunction)(void (*)(void))aegis_take_left, METH_FASTCALL,
     "The first min(count, len) items of a deque, removed (aegis_mw.core.deque_take)."},
    {"split_left", (PyCFunction)(void (*)(void))aegis_split_left, METH_FASTCALL,
     "(of type kind, others) among a deque's first min(count, len) items (aegis_mw.core.deque_take)."},
    {"reuse_records", aegis_reuse_records, METH_O,
     "Keep freed instances of this RequestRecord type for reuse by the finalize loop (free_lists.c)."},
    {"free_list_sizes", aegis_free_list_sizes, METH_NOARGS,
     "(items kept, item limit, records kept, record limit) of the free lists (tests)."},
    {"clear_free_lists", aegis_clear_free_lists, METH_NOARGS,
     "Free what the free lists hold (tests)."},
    {"histogram_text", (PyCFunction)(void (*)(void))aegis_histogram_text, METH_FASTCALL,
     "A rollup histogram dict as stored text, or None for Python (aegis_mw.core.rollup)."},
    {"histogram_merge_text", (PyCFunction)(void (*)(void))aegis_histogram_merge_text, METH_FASTCALL,
     "Two stored rollup histograms added, or None for Python (aegis_mw.core.rollup)."},
    {"item_from_fields", aegis_item_from_fields, METH_O,
     "An HttpItem holding the 14 fields of a list item (tests, benchmarks)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hotpath_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "aegis_mw._hotpath",
    .m_doc = "The compiled request paths of the ASGI, WSGI and Django middlewares.",
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
    {&aegis_str.http, "http"},
    {&aegis_str.compiled, "_compiled"},
    {&aegis_str.dunder_call, "__call__"},
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
    {&aegis_str.trace_source, "trace_source"},
    {&aegis_str.headers, "headers"},
    {&aegis_str.environ_traceparent, "HTTP_TRACEPARENT"},
    {&aegis_str.throw, "throw"},
    {&aegis_str.close, "close"},
    {&aegis_str.empty, ""},
    {&aegis_str.queue_failed, "_queue_failed"},
    {&aegis_str.settle_unfinished, "_settle_unfinished"},
    {&aegis_str.internal_error, "_internal_error"},
    {&aegis_str.path_info, "PATH_INFO"},
    {&aegis_str.request_method, "REQUEST_METHOD"},
    {&aegis_str.script_name, "SCRIPT_NAME"},
    {&aegis_str.remote_addr, "REMOTE_ADDR"},
    {&aegis_str.remote_port, "REMOTE_PORT"},
    {&aegis_str.wsgi_input, "wsgi.input"},
    {&aegis_str.content_length, "CONTENT_LENGTH"},
    {&aegis_str.transfer_encoding, "HTTP_TRANSFER_ENCODING"},
    {&aegis_str.file_wrapper, "wsgi.file_wrapper"},
    {&aegis_str.aegis_route, "aegis.route"},
    {&aegis_str.aegis_error, "aegis.error"},
    {&aegis_str.method_get, "GET"},
    {&aegis_str.method_head, "HEAD"},
    {&aegis_str.slash, "/"},
    {&aegis_str.start, "_start"},
    {&aegis_str.queue, "_queue"},
    {&aegis_str.forwarded_for, "_forwarded"},
    {&aegis_str.iteration_failed, "_iteration_failed"},
    {&aegis_str.watch_file, "_watch_file"},
    {&aegis_str.path_info_attribute, "path_info"},
    {&aegis_str.meta, "META"},
    {&aegis_str.status_code, "status_code"},
    {&aegis_str.streaming, "streaming"},
    {&aegis_str.container, "_container"},
    {&aegis_str.resource_closers, "_resource_closers"},
    {&aegis_str.resolver_match, "resolver_match"},
    {&aegis_str.item_attribute, "_aegis_item"},
    {&aegis_str.serve_mounted, "serve_mounted"},
    {&aegis_str.raised, "_raised"},
    {&aegis_str.watch_stream, "_watch_stream"},
    {&aegis_str.template, "_template"},
    {&aegis_str.process_exception, "process_exception"},
    {&aegis_str.popleft, "popleft"},
    {&aegis_str.get_span_context, "get_span_context"},
    {&aegis_str.is_valid, "is_valid"},
    {&aegis_str.trace_id, "trace_id"},
    {&aegis_str.span_id, "span_id"},
    {&aegis_str.hex32, "032x"},
    {&aegis_str.hex16, "016x"},
};

/* PyModule_Add (3.13) for the older versions: `value` is released either way. */
static int
add_owned(PyObject *module, const char *name, PyObject *value)
{
    if (value == NULL) {
        return -1;
    }
    int status = PyModule_AddObjectRef(module, name, value);
    Py_DECREF(value);
    return status;
}

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
        || PyType_Ready(&AegisReceiverType) < 0 || PyType_Ready(&AegisHttpPathType) < 0
        || PyType_Ready(&AegisWsgiPathType) < 0 || PyType_Ready(&AegisWsgiStartType) < 0
        || PyType_Ready(&AegisWsgiResponseType) < 0
        || PyType_Ready(&AegisWsgiSizedResponseType) < 0
        || PyType_Ready(&AegisWsgiWriterType) < 0 || PyType_Ready(&AegisDjangoPathType) < 0
        || PyType_Ready(&AegisDjangoCloserType) < 0 || PyType_Ready(&AegisFoldPendingType) < 0) {
        return NULL;
    }
    aegis_free_lists_init();
    if (aegis_finalize_init() < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&hotpath_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "HttpPath", (PyObject *)&AegisHttpPathType) < 0
        || PyModule_AddObjectRef(module, "HttpItem", (PyObject *)&AegisItemType) < 0
        || PyModule_AddObjectRef(module, "WsgiPath", (PyObject *)&AegisWsgiPathType) < 0
        || PyModule_AddObjectRef(module, "DjangoPath", (PyObject *)&AegisDjangoPathType) < 0
        || PyModule_AddObjectRef(module, "FoldPending", (PyObject *)&AegisFoldPendingType) < 0
        || PyModule_AddIntConstant(module, "NATIVE_MONOTONIC", AEGIS_NATIVE_MONOTONIC) < 0
        || PyModule_AddIntConstant(module, "PIPELINE_LOOPS", AEGIS_PIPELINE_LOOPS) < 0
        || PyModule_AddIntConstant(module, "ITEM_FIELDS", I_FIELDS) < 0
        || add_owned(module, "FOLD_LAYOUT", aegis_fold_layout()) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
