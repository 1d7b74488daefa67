/* HttpPath: one per middleware. Called with (scope, receive, send), it returns
 * the Exchange to await: by the server itself when the instance is called
 * (direct_call below), or by the middleware's `async def __call__` (a
 * subclass's, or a call by keyword). Its first step starts the app; an
 * excluded path or a scope other than HTTP is handed to the middleware's
 * Python code and awaited through it, unrecorded. */
#include "hotpath.h"

/* A native coroutine, or a generator marked as one by @types.coroutine:
 * 1, 0, or -1 on an error. */
static int
is_coroutine(PyObject *object)
{
    if (PyCoro_CheckExact(object)) {
        return 1;
    }
    if (!PyGen_CheckExact(object)) {
        return 0;
    }
    PyObject *code = PyObject_GetAttrString(object, "gi_code");  /* rare: no fast path */
    PyObject *flags = code != NULL ? PyObject_GetAttrString(code, "co_flags") : NULL;
    Py_XDECREF(code);
    if (flags == NULL) {
        return -1;
    }
    long value = PyLong_AsLong(flags);
    Py_DECREF(flags);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    return (value & CO_ITERABLE_COROUTINE) != 0;
}

/* The iterator `await` would drive for `awaitable` (a new reference), with the
 * interpreter's own checks and words, so both paths record the same error. */
static PyObject *
awaitable_iterator(PyObject *awaitable)
{
    int coroutine = is_coroutine(awaitable);
    if (coroutine != 0) {
        return coroutine < 0 ? NULL : Py_NewRef(awaitable);
    }
    PyTypeObject *type = Py_TYPE(awaitable);
    if (type->tp_as_async == NULL || type->tp_as_async->am_await == NULL) {
#if PY_VERSION_HEX >= 0x030E0000
        PyErr_Format(PyExc_TypeError, "'%.100s' object can't be awaited", type->tp_name);
#else
        PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                     type->tp_name);
#endif
        return NULL;
    }
    PyObject *iterator = type->tp_as_async->am_await(awaitable);
    if (iterator == NULL) {
        return NULL;
    }
    coroutine = is_coroutine(iterator);
    if (coroutine != 0) {
        if (coroutine > 0) {
            PyErr_SetString(PyExc_TypeError, "__await__() returned a coroutine");
        }
        Py_DECREF(iterator);
        return NULL;
    }
    if (!PyIter_Check(iterator)) {
        PyErr_Format(PyExc_TypeError, "__await__() returned non-iterator of type '%.100s'",
                     Py_TYPE(iterator)->tp_name);
        Py_DECREF(iterator);
        return NULL;
    }
    return iterator;
}

/* scope[key] as a new reference (a KeyError when absent, as in Python). */
static PyObject *
scope_item(PyObject *scope, PyObject *key)
{
    if (PyDict_CheckExact(scope)) {
        PyObject *value = PyDict_GetItemWithError(scope, key);
        if (value == NULL && !PyErr_Occurred()) {
            PyErr_SetObject(PyExc_KeyError, key);
        }
        return Py_XNewRef(value);
    }
    return PyObject_GetItem(scope, key);
}

/* scope.get("client") as a new reference. */
static PyObject *
scope_client(PyObject *scope)
{
    if (PyDict_CheckExact(scope)) {
        PyObject *value = PyDict_GetItemWithError(scope, aegis_str.client);
        if (value == NULL) {
            return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
        }
        return Py_NewRef(value);
    }
    return PyObject_CallMethodOneArg(scope, aegis_str.get, aegis_str.client);
}

/* A new request's item: method, start time and client, read in the Python
 * path's order (so a failure is the same failure). */
static ItemObject *
start_item(HttpPathObject *self, PyObject *scope, PyObject *request_path)
{
    double start;
    PyObject *method = scope_item(scope, aegis_str.method);
    if (method == NULL) {
        return NULL;
    }
    PyObject *client = aegis_now(&self->rec, &start) < 0 ? NULL : scope_client(scope);
    if (client == NULL) {
        Py_DECREF(method);
        return NULL;
    }
    ItemObject *item = aegis_new_item(method, request_path, client);
    Py_DECREF(method);
    Py_DECREF(client);
    if (item != NULL) {
        item->start = start;
        if (self->rec.trace && aegis_trace_from_headers(&self->rec, item, scope) < 0) {
            Py_CLEAR(item);
        }
    }
    return item;
}

/* What `other` or `bypass` returned, as the iterator the exchange drives on
 * without recording: 0, or -1 with the exception set. */
static int
delegate(ExchangeObject *exchange, PyObject *awaitable)
{
    if (awaitable == NULL) {
        return -1;
    }
    exchange->inner = awaitable_iterator(awaitable);
    Py_DECREF(awaitable);
    return exchange->inner != NULL ? 0 : -1;
}

/* The Python path's __call__ up to the app's first step, in its order: the
 * scope's type (other scopes go to `other`), the path (an excluded one to
 * `bypass`), then the item and the app's call. 0, or -1 with the exception. */
static int
launch(ExchangeObject *exchange, PyObject *const *args)
{
    HttpPathObject *self = exchange->path;
    if (self->app == NULL) {  /* emptied by the collector since the call */
        PyErr_SetString(PyExc_RuntimeError, "HttpPath is not initialised");
        return -1;
    }
    PyObject *scope = args[0], *receive = args[1], *send = args[2];
    PyObject *kind = scope_item(scope, aegis_str.type);
    if (kind == NULL) {
        return -1;
    }
    int other = PyObject_RichCompareBool(kind, aegis_str.http, Py_NE);
    Py_DECREF(kind);
    if (other != 0) {
        return other < 0 ? -1 : delegate(exchange, PyObject_Vectorcall(self->other, args, 3, NULL));
    }
    PyObject *request_path = scope_item(scope, aegis_str.path);
    if (request_path == NULL) {
        return -1;
    }
    int excluded = aegis_excluded(self->exclusions, request_path);
    if (excluded != 0) {
        Py_DECREF(request_path);
        return excluded < 0 ? -1
                            : delegate(exchange, PyObject_Vectorcall(self->bypass, args, 3, NULL));
    }
    ItemObject *item = start_item(self, scope, request_path);
    Py_DECREF(request_path);
    if (item == NULL) {
        return -1;
    }

    SenderObject *sender = PyObject_GC_New(SenderObject, &AegisSenderType);
    ReceiverObject *receiver = PyObject_GC_New(ReceiverObject, &AegisReceiverType);
    if (sender == NULL || receiver == NULL) {
        /* Not tracked yet: free the raw memory, fields were never set. */
        if (sender != NULL) {
            PyObject_GC_Del(sender);
        }
        if (receiver != NULL) {
            PyObject_GC_Del(receiver);
        }
        Py_DECREF(item);
        return -1;
    }
    exchange->item = item;
    exchange->scope = Py_NewRef(scope);
    sender->vectorcall = aegis_sender_call;
    sender->path = (HttpPathObject *)Py_NewRef(self);
    sender->item = (ItemObject *)Py_NewRef(item);
    sender->send = Py_NewRef(send);
    PyObject_GC_Track(sender);
    receiver->vectorcall = aegis_receiver_call;
    receiver->path = (HttpPathObject *)Py_NewRef(self);
    receiver->item = (ItemObject *)Py_NewRef(item);
    receiver->receive = Py_NewRef(receive);
    PyObject_GC_Track(receiver);

    self->rec.in_flight += 1;
    PyObject *app_args[3] = {scope, (PyObject *)receiver, (PyObject *)sender};
    PyObject *awaitable = PyObject_Vectorcall(self->app, app_args, 3, NULL);
    Py_DECREF(sender);
    Py_DECREF(receiver);
    if (awaitable != NULL) {
        exchange->inner = awaitable_iterator(awaitable);
        Py_DECREF(awaitable);
    }
    if (exchange->inner == NULL) {  /* the app raised before it could be awaited */
        aegis_finish_raised(exchange);
        return -1;
    }
    return 0;
}

int
aegis_exchange_start(ExchangeObject *exchange)
{
    PyObject *args[3] = {exchange->scope, exchange->receive, exchange->send};
    /* Started: the scope is set again only for a request that is recorded. */
    exchange->scope = exchange->receive = exchange->send = NULL;
    int status = launch(exchange, args);
    Py_DECREF(args[0]);
    Py_DECREF(args[1]);
    Py_DECREF(args[2]);
    return status;
}

/* HttpPath(scope, receive, send): what to await, which does nothing before
 * its first step (exchange.c), as a coroutine's body. */
static PyObject *
http_path_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    HttpPathObject *self = (HttpPathObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 3 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "HttpPath expects (scope, receive, send)");
        return NULL;
    }
    if (self->app == NULL) {  /* not initialised, or emptied by the collector */
        PyErr_SetString(PyExc_RuntimeError, "HttpPath is not initialised");
        return NULL;
    }
    ExchangeObject *exchange = PyObject_GC_New(ExchangeObject, &AegisExchangeType);
    if (exchange == NULL) {
        return NULL;
    }
    exchange->path = (HttpPathObject *)Py_NewRef(self);
    exchange->item = NULL;
    exchange->scope = Py_NewRef(args[0]);
    exchange->receive = Py_NewRef(args[1]);
    exchange->send = Py_NewRef(args[2]);
    exchange->inner = NULL;
    exchange->running = 0;
    exchange->awaited = 0;
    PyObject_GC_Track(exchange);
    return (PyObject *)exchange;
}

/* The tp_call of an AegisMiddleware class (call_directly below): a call
 * (scope, receive, send) of an instance with a compiled path is that path's,
 * so no coroutine of the middleware's wraps the request; any other call (by
 * keyword, say), or an instance without one, is the class's __call__, as
 * Python makes it. */
static PyObject *
direct_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) == 3 && (kwargs == NULL || PyDict_GET_SIZE(kwargs) == 0)) {
        PyObject *path = NULL;
        if (aegis_optional_attr(self, aegis_str.compiled, &path) < 0) {
            PyErr_Clear();  /* the Python __call__ meets it where Python would */
        }
        if (path != NULL && Py_IS_TYPE(path, &AegisHttpPathType)) {
            PyObject *result = http_path_call(path, &PyTuple_GET_ITEM(args, 0), 3, NULL);
            Py_DECREF(path);
            return result;
        }
        Py_XDECREF(path);
    }
    PyTypeObject *type = Py_TYPE(self);
    PyObject *call = _PyType_Lookup(type, aegis_str.dunder_call);  /* borrowed */
    if (call == NULL) {
        PyErr_Format(PyExc_TypeError, "'%.100s' object is not callable", type->tp_name);
        return NULL;
    }
    descrgetfunc get = Py_TYPE(call)->tp_descr_get;
    PyObject *bound = get != NULL ? get(call, self, (PyObject *)type) : Py_NewRef(call);
    if (bound == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Call(bound, args, kwargs);
    Py_DECREF(bound);
    return result;
}

/* call_directly(cls): instances of cls, a class of AegisMiddleware's whose
 * __call__ is AegisMiddleware's own, are called as direct_call says. Setting
 * cls.__call__ afterwards puts Python's own slot back, and its subclasses get
 * Python's (they run the Python __call__, which awaits the compiled path). */
PyObject *
aegis_call_directly(PyObject *module, PyObject *cls)
{
    if (!PyType_Check(cls) || !PyType_HasFeature((PyTypeObject *)cls, Py_TPFLAGS_HEAPTYPE)) {
        PyErr_SetString(PyExc_TypeError, "call_directly expects a class defined in Python");
        return NULL;
    }
    ((PyTypeObject *)cls)->tp_call = direct_call;
    Py_RETURN_NONE;
}

static int
http_path_init(HttpPathObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {
        "owner", "app", "bypass", "clock", "native_clock", "templates", "read_route", "exclusions",
        "recorder", "observe_send", "observe_receive", "throw_quietly", "other", "check_forwarded",
        NULL,
    };
    PyObject *owner, *app, *bypass, *clock, *templates, *read_route, *exclusions, *recorder;
    PyObject *observe_send, *observe_receive, *throw_quietly, *other;
    int native_clock, check_forwarded;
    if (aegis_refuse_init_again((PyObject *)self, self->vectorcall) < 0) {
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$OOOOpO!OO!OOOOOp:HttpPath", keywords, &owner, &app, &bypass, &clock,
            &native_clock, &PyDict_Type, &templates, &read_route, &PyList_Type, &exclusions,
            &recorder, &observe_send, &observe_receive, &throw_quietly, &other,
            &check_forwarded)) {
        return -1;
    }
    if (aegis_recording_init(&self->rec, owner, clock, native_clock, recorder) < 0) {
        return -1;
    }
    Py_XSETREF(self->app, Py_NewRef(app));
    Py_XSETREF(self->bypass, Py_NewRef(bypass));
    Py_XSETREF(self->templates, Py_NewRef(templates));
    Py_XSETREF(self->read_route, Py_NewRef(read_route));
    Py_XSETREF(self->exclusions, Py_NewRef(exclusions));
    Py_XSETREF(self->observe_send, Py_NewRef(observe_send));
    Py_XSETREF(self->observe_receive, Py_NewRef(observe_receive));
    Py_XSETREF(self->throw_quietly, Py_NewRef(throw_quietly));
    Py_XSETREF(self->other, Py_NewRef(other));
    self->check_forwarded = check_forwarded;
    self->vectorcall = http_path_call;
    return 0;
}

static int
http_path_traverse(HttpPathObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->app);
    Py_VISIT(self->bypass);
    Py_VISIT(self->templates);
    Py_VISIT(self->read_route);
    Py_VISIT(self->exclusions);
    Py_VISIT(self->observe_send);
    Py_VISIT(self->observe_receive);
    Py_VISIT(self->throw_quietly);
    Py_VISIT(self->other);
    return aegis_recording_traverse(&self->rec, visit, arg);
}

static int
http_path_clear(HttpPathObject *self)
{
    aegis_recording_clear(&self->rec);
    Py_CLEAR(self->app);
    Py_CLEAR(self->bypass);
    Py_CLEAR(self->templates);
    Py_CLEAR(self->read_route);
    Py_CLEAR(self->exclusions);
    Py_CLEAR(self->observe_send);
    Py_CLEAR(self->observe_receive);
    Py_CLEAR(self->throw_quietly);
    Py_CLEAR(self->other);
    return 0;
}

static void
http_path_dealloc(HttpPathObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    http_path_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
http_path_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    HttpPathObject *self = (HttpPathObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        /* Until __init__ ran, calling it raises instead of crashing. */
        self->vectorcall = NULL;
    }
    return (PyObject *)self;
}

static PyObject *
http_path_plain_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    HttpPathObject *self = (HttpPathObject *)op;
    if (self->app == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "HttpPath was not initialised");
        return NULL;
    }
    return PyVectorcall_Call(op, args, kwargs);
}

static PyMemberDef http_path_members[] = {
    {"in_flight", T_PYSSIZET, offsetof(HttpPathObject, rec.in_flight), 0,
     "Requests started and not yet finished on this path."},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject AegisHttpPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.HttpPath",
    .tp_doc = "The compiled HTTP request path of one AegisMiddleware.",
    .tp_basicsize = sizeof(HttpPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(HttpPathObject, vectorcall),
    .tp_call = http_path_plain_call,
    .tp_new = http_path_new,
    .tp_init = (initproc)http_path_init,
    .tp_dealloc = (destructor)http_path_dealloc,
    .tp_traverse = (traverseproc)http_path_traverse,
    .tp_clear = (inquiry)http_path_clear,
    .tp_weaklistoffset = offsetof(HttpPathObject, weakreflist),
    .tp_members = http_path_members,
};
