/* WsgiPath: one per AegisWSGIMiddleware. Called with (environ, start_response)
 * by the server (through the middleware's __call__), it starts the request's
 * item, calls the app with a start_response of ours (wsgi_start.c), and hands
 * the server the response (wsgi_response.c), timed to its close(). It does what the Python
 * path (AegisWSGIMiddleware.call_python) does, which stays the reference: an
 * environ that is not a dict goes there whole, and the rare cases (the
 * pipeline not started yet, a request body, a file response, the app raising,
 * trusted proxies) go to the middleware's methods. */
#include "hotpath.h"

/* environ.get(key) as a borrowed reference, NULL when absent (no error set),
 * NULL with an error set on a failure (only a key's __eq__ could fail). */
static inline PyObject *
get_borrowed(PyObject *environ, PyObject *key)
{
    return PyDict_GetItemWithError(environ, key);
}

/* PATH_INFO, "/" when absent or empty. New reference. */
static PyObject *
request_path_of(PyObject *environ)
{
    /* Held while its truth is asked: a __bool__ could take it out of the environ. */
    PyObject *path = Py_XNewRef(get_borrowed(environ, aegis_str.path_info));
    if (path == NULL && PyErr_Occurred()) {
        return NULL;
    }
    int present = aegis_truthy(path);
    if (present <= 0) {
        Py_XDECREF(path);
        return present < 0 ? NULL : Py_NewRef(aegis_str.slash);
    }
    return path;
}

/* SCRIPT_NAME + path, as the Python path concatenates them (SCRIPT_NAME
 * defaulting to ""). New reference. */
static PyObject *
full_path(PyObject *environ, PyObject *path)
{
    PyObject *script = get_borrowed(environ, aegis_str.script_name);
    if (script == NULL && PyErr_Occurred()) {
        return NULL;
    }
    /* "" + path is path itself only for an exact str: for a str subclass it is
     * a plain str (what the flusher accepts), for anything else a TypeError. */
    if ((script == NULL || (PyUnicode_CheckExact(script) && PyUnicode_GET_LENGTH(script) == 0))
        && PyUnicode_CheckExact(path)) {
        return Py_NewRef(path);
    }
    /* Held while adding: a path type's __radd__ could change the environ. */
    script = Py_NewRef(script != NULL ? script : aegis_str.empty);
    PyObject *whole = PyNumber_Add(script, path);
    Py_DECREF(script);
    return whole;
}

/* A new request's item, fields read in the Python path's order. */
static ItemObject *
start_item(WsgiPathObject *self, PyObject *environ, PyObject *path)
{
    PyObject *method = get_borrowed(environ, aegis_str.request_method);
    if (method == NULL && PyErr_Occurred()) {
        return NULL;
    }
    method = Py_NewRef(method != NULL ? method : aegis_str.method_get);
    PyObject *whole = full_path(environ, path);
    double start;
    PyObject *client = whole == NULL || aegis_now(&self->rec, &start) < 0 ? NULL
                                                                           : aegis_client_of(environ);
    ItemObject *item = client != NULL ? aegis_new_item(method, whole, client) : NULL;
    Py_DECREF(method);
    Py_XDECREF(whole);
    Py_XDECREF(client);
    if (item != NULL) {
        item->start = start;
        if (self->rec.trace && aegis_trace_from_environ(&self->rec, item, environ) < 0) {
            Py_CLEAR(item);
        }
    }
    return item;
}

/* The truth of environ[key] (0 when absent), or -1 with an error set. */
static int
truthy_entry(PyObject *environ, PyObject *key)
{
    PyObject *value = Py_XNewRef(get_borrowed(environ, key));
    if (value == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    int truth = aegis_truthy(value);
    Py_DECREF(value);
    return truth;
}

/* A request body the app may read: wsgi.input replaced by a counting one
 * (Python's CountingInput: bodies are rare on the paths that must be cheap). */
static int
count_request_body(WsgiPathObject *self, PyObject *environ, ItemObject *item)
{
    PyObject *stream = get_borrowed(environ, aegis_str.wsgi_input);
    if (stream == NULL || stream == Py_None) {  /* `stream is not None`, as in Python */
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_INCREF(stream);  /* held: asking a header's truth may run code */
    int body = truthy_entry(environ, aegis_str.content_length);
    if (body == 0) {
        body = truthy_entry(environ, aegis_str.transfer_encoding);
    }
    if (body <= 0) {
        Py_DECREF(stream);
        return body;
    }
    PyObject *counting = PyObject_CallFunctionObjArgs(
        self->counting_input, stream, (PyObject *)item, NULL);
    Py_DECREF(stream);
    if (counting == NULL) {
        return -1;
    }
    int status = PyDict_SetItem(environ, aegis_str.wsgi_input, counting);
    Py_DECREF(counting);
    return status;
}

static PyObject *
wsgi_path_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WsgiPathObject *self = (WsgiPathObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 2 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "WsgiPath expects (environ, start_response)");
        return NULL;
    }
    if (self->app == NULL) {  /* not initialised, or emptied by the collector */
        PyErr_SetString(PyExc_RuntimeError, "WsgiPath is not initialised");
        return NULL;
    }
    PyObject *environ = args[0], *start_response = args[1];
    if (!PyDict_CheckExact(environ)) {  /* PEP 3333 says a dict; anything else: Python */
        return PyObject_Vectorcall(self->fallback, args, 2, NULL);
    }
    if (!self->started) {
        PyObject *done = PyObject_CallMethodNoArgs(self->rec.owner, aegis_str.start);
        if (done == NULL) {
            return NULL;
        }
        Py_DECREF(done);
        self->started = 1;
    }
    PyObject *path = request_path_of(environ);
    if (path == NULL) {
        return NULL;
    }
    int excluded = aegis_excluded(self->exclusions, path);
    if (excluded != 0) {
        Py_DECREF(path);
        return excluded < 0 ? NULL : PyObject_Vectorcall(self->bypass, args, 2, NULL);
    }
    ItemObject *item = start_item(self, environ, path);
    Py_DECREF(path);
    if (item == NULL) {
        return NULL;
    }
    if (count_request_body(self, environ, item) < 0) {
        Py_DECREF(item);
        return NULL;
    }
    WsgiStartObject *start = aegis_wsgi_start_new(self, item, start_response);
    if (start == NULL) {
        Py_DECREF(item);
        return NULL;
    }
    self->rec.in_flight += 1;
    PyObject *app_args[2] = {environ, (PyObject *)start};
    PyObject *result = PyObject_Vectorcall(self->app, app_args, 2, NULL);
    PyObject *answer = NULL;
    if (result == NULL) {
        aegis_wsgi_app_raised(self, item, environ);  /* recorded; the app's exception stays set */
    }
    else {
        answer = aegis_wsgi_respond(self, item, environ, start, result);
        Py_DECREF(result);
    }
    Py_DECREF(start);
    Py_DECREF(item);
    return answer;
}

static int
wsgi_path_init(WsgiPathObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {
        "owner", "app", "bypass", "fallback", "clock", "native_clock", "exclusions", "recorder",
        "read_route", "route_key", "templates", "status_code", "counting_input",
        "start_arguments", "write_arguments", "unmatched", "check_forwarded", NULL,
    };
    PyObject *owner, *app, *bypass, *fallback, *clock, *exclusions, *recorder, *read_route;
    PyObject *route_key, *templates, *status_code, *counting_input, *start_arguments;
    PyObject *write_arguments, *unmatched;
    int native_clock, check_forwarded;
    if (aegis_refuse_init_again((PyObject *)self, self->vectorcall) < 0) {
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$OOOOOpO!OOOOOOOOUp:WsgiPath", keywords, &owner, &app, &bypass,
            &fallback, &clock, &native_clock, &PyList_Type, &exclusions, &recorder, &read_route,
            &route_key, &templates, &status_code, &counting_input, &start_arguments,
            &write_arguments, &unmatched, &check_forwarded)) {
        return -1;
    }
    int by_object = route_key != Py_None;
    if (by_object && (!PyUnicode_Check(route_key) || !PyDict_CheckExact(templates))) {
        PyErr_SetString(PyExc_TypeError, "route_key is a str and templates a dict, or both None");
        return -1;
    }
    if (aegis_recording_init(&self->rec, owner, clock, native_clock, recorder) < 0) {
        return -1;
    }
    Py_XSETREF(self->app, Py_NewRef(app));
    Py_XSETREF(self->bypass, Py_NewRef(bypass));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    Py_XSETREF(self->exclusions, Py_NewRef(exclusions));
    Py_XSETREF(self->read_route, Py_NewRef(read_route));
    Py_XSETREF(self->route_key, by_object ? Py_NewRef(route_key) : NULL);
    Py_XSETREF(self->templates, by_object ? Py_NewRef(templates) : NULL);
    Py_XSETREF(self->status_code, Py_NewRef(status_code));
    Py_XSETREF(self->counting_input, Py_NewRef(counting_input));
    Py_XSETREF(self->start_arguments, Py_NewRef(start_arguments));
    Py_XSETREF(self->write_arguments, Py_NewRef(write_arguments));
    Py_XSETREF(self->unmatched, Py_NewRef(unmatched));
    self->check_forwarded = check_forwarded;
    self->started = 0;
    self->vectorcall = wsgi_path_call;
    return 0;
}

static int
wsgi_path_traverse(WsgiPathObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->app);
    Py_VISIT(self->bypass);
    Py_VISIT(self->fallback);
    Py_VISIT(self->exclusions);
    Py_VISIT(self->read_route);
    Py_VISIT(self->route_key);
    Py_VISIT(self->templates);
    Py_VISIT(self->status_code);
    Py_VISIT(self->counting_input);
    Py_VISIT(self->start_arguments);
    Py_VISIT(self->write_arguments);
    Py_VISIT(self->unmatched);
    return aegis_recording_traverse(&self->rec, visit, arg);
}

static int
wsgi_path_clear(WsgiPathObject *self)
{
    aegis_recording_clear(&self->rec);
    Py_CLEAR(self->app);
    Py_CLEAR(self->bypass);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->exclusions);
    Py_CLEAR(self->read_route);
    Py_CLEAR(self->route_key);
    Py_CLEAR(self->templates);
    Py_CLEAR(self->status_code);
    Py_CLEAR(self->counting_input);
    Py_CLEAR(self->start_arguments);
    Py_CLEAR(self->write_arguments);
    Py_CLEAR(self->unmatched);
    return 0;
}

static void
wsgi_path_dealloc(WsgiPathObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    wsgi_path_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
wsgi_path_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    WsgiPathObject *self = (WsgiPathObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->vectorcall = NULL;  /* until __init__ ran, calling it raises */
    }
    return (PyObject *)self;
}

static PyObject *
wsgi_path_plain_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    WsgiPathObject *self = (WsgiPathObject *)op;
    if (self->app == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "WsgiPath was not initialised");
        return NULL;
    }
    return PyVectorcall_Call(op, args, kwargs);
}

static PyMemberDef wsgi_path_members[] = {
    {"in_flight", T_PYSSIZET, offsetof(WsgiPathObject, rec.in_flight), 0,
     "Requests started and not yet finished on this path."},
    {"started", T_BOOL, offsetof(WsgiPathObject, started), 0,
     "Whether the pipeline was started in this process (a fork clears it)."},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject AegisWsgiPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.WsgiPath",
    .tp_doc = "The compiled request path of one AegisWSGIMiddleware.",
    .tp_basicsize = sizeof(WsgiPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(WsgiPathObject, vectorcall),
    .tp_call = wsgi_path_plain_call,
    .tp_new = wsgi_path_new,
    .tp_init = (initproc)wsgi_path_init,
    .tp_dealloc = (destructor)wsgi_path_dealloc,
    .tp_traverse = (traverseproc)wsgi_path_traverse,
    .tp_clear = (inquiry)wsgi_path_clear,
    .tp_weaklistoffset = offsetof(WsgiPathObject, weakreflist),
    .tp_members = wsgi_path_members,
};
