/* WsgiResponse: one WSGI request. The app calls it as its start_response (it
 * notes the status and hands the call to the server's), and the server gets
 * it as the response iterable: it counts the chunks as they pass, stamps the
 * first byte, and its close() closes the app's iterable once, stops the clock
 * and queues the item. Writer is the write() that start_response returns.
 *
 * Whether the app's iterable has a length is known only when the app returns,
 * after it was handed start_response, so the one object per request changes
 * its type then to WsgiSizedResponse (a subtype of the same layout with
 * __len__): a server may size a response by its length, as without us. */
#include "hotpath.h"

static PyObject *response_start(PyObject *op, PyObject *const *args, size_t nargsf,
                                PyObject *kwnames);
static PyObject *writer_write(PyObject *op, PyObject *const *args, size_t nargsf,
                              PyObject *kwnames);

WsgiResponseObject *
aegis_wsgi_response_new(WsgiPathObject *path, ItemObject *item, PyObject *environ,
                        PyObject *start_response)
{
    WsgiResponseObject *self = PyObject_GC_New(WsgiResponseObject, &AegisWsgiResponseType);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = response_start;
    self->path = (WsgiPathObject *)Py_NewRef(path);
    self->item = (ItemObject *)Py_NewRef(item);
    self->environ = Py_NewRef(environ);
    self->start_response = Py_NewRef(start_response);
    self->write = NULL;
    self->headers = NULL;
    self->result = NULL;
    self->iterator = NULL;
    self->finished = 0;
    self->exhausted = 0;
    PyObject_GC_Track(self);
    return self;
}

/* The app raised, from its call (the exception is set): recorded by the
 * Python path's _queue, and left set, unchanged. */
void
aegis_wsgi_app_raised(WsgiResponseObject *self)
{
    WsgiPathObject *path = self->path;
    self->finished = 1;
    path->rec.in_flight -= 1;
    PyObject *exc = take_exception();
    PyObject *done = PyObject_CallMethodObjArgs(
        path->rec.owner, aegis_str.queue, self->environ, (PyObject *)self->item, exc, NULL);
    Py_CLEAR(self->environ);
    if (done == NULL) {
        aegis_keep_original(&path->rec, exc);
        return;
    }
    Py_DECREF(done);
    restore_exception(exc);
}

/* Iterating the app's response raised (the exception is set): its error and
 * a 500 when nothing was sent, by the Python path's own code; left set. */
static void
iteration_failed(WsgiResponseObject *self)
{
    PyObject *exc = take_exception();
    PyObject *done = PyObject_CallMethodObjArgs(
        self->path->rec.owner, aegis_str.iteration_failed, (PyObject *)self->item, exc, NULL);
    if (done == NULL) {
        aegis_keep_original(&self->path->rec, exc);
        return;
    }
    Py_DECREF(done);
    restore_exception(exc);
}

/* len(object) is defined (hasattr(type(result), "__len__") on the Python path). */
static inline int
has_length(PyObject *object)
{
    PyTypeObject *type = Py_TYPE(object);
    return (type->tp_as_sequence != NULL && type->tp_as_sequence->sq_length != NULL)
        || (type->tp_as_mapping != NULL && type->tp_as_mapping->mp_length != NULL);
}

/* isinstance(result, wrapper), as the Python path asks it, without its cost
 * for the usual answers: a list, tuple or generator cannot claim another
 * class (by a __class__ of its own), so unless the wrapper's metaclass has a
 * say (__instancecheck__), their type decides. 1, 0, or -1 on an error. */
static int
is_instance(PyObject *result, PyObject *wrapper)
{
    if (Py_IS_TYPE(wrapper, &PyType_Type)) {
        if (PyObject_TypeCheck(result, (PyTypeObject *)wrapper)) {
            return 1;
        }
        if (PyList_CheckExact(result) || PyTuple_CheckExact(result) || PyGen_CheckExact(result)) {
            return 0;
        }
    }
    return PyObject_IsInstance(result, wrapper);
}

/* A response of the server's wsgi.file_wrapper goes to the Python path,
 * which hands it back as it is (so the server can sendfile() it). 1 when it
 * was taken (*answer set), 0 when not, -1 on an error. */
static int
file_response(WsgiResponseObject *self, PyObject *result, PyObject **answer)
{
    PyObject *wrapper = PyDict_GetItemWithError(self->environ, aegis_str.file_wrapper);
    if (wrapper == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyType_Check(wrapper)) {
        return 0;
    }
    /* Held: a metaclass's __instancecheck__ could change the environ. */
    Py_INCREF(wrapper);
    int instance = is_instance(result, wrapper);
    Py_DECREF(wrapper);
    if (instance <= 0) {
        return instance;
    }
    WsgiPathObject *path = self->path;
    PyObject *watched = PyObject_CallMethodObjArgs(
        path->rec.owner, aegis_str.watch_file, self->environ, (PyObject *)self->item, result,
        self->headers != NULL ? self->headers : Py_None, NULL);
    if (watched == NULL) {
        return -1;
    }
    if (watched == Py_None) {  /* its close() could not be replaced: wrap it */
        Py_DECREF(watched);
        return 0;
    }
    /* The Python path counts it in flight now, and records it at its close(). */
    self->finished = 1;
    path->rec.in_flight -= 1;
    Py_CLEAR(self->environ);
    *answer = watched;
    return 1;
}

/* The app returned `result`: what the server gets (a new reference). */
PyObject *
aegis_wsgi_respond(WsgiResponseObject *self, PyObject *result)
{
    self->result = Py_NewRef(result);
    PyObject *answer = NULL;
    int taken = file_response(self, result, &answer);
    if (taken > 0) {
        return answer;
    }
    if (taken < 0) {  /* a failure of ours: counted, and the app's answer goes out unrecorded */
        self->finished = 1;
        self->path->rec.in_flight -= 1;
        Py_CLEAR(self->environ);
        if (aegis_own_failure(&self->path->rec) < 0) {
            return NULL;
        }
        return Py_NewRef(result);
    }
    if (has_length(result)) {
        Py_SET_TYPE(self, &AegisWsgiSizedResponseType);
    }
    return Py_NewRef(self);
}

/* The code of a status line: the usual "200 OK" read here, anything else by
 * the Python path's status_code(). New reference. */
static PyObject *
status_code(WsgiPathObject *path, PyObject *status)
{
    if (PyUnicode_CheckExact(status) && PyUnicode_IS_ASCII(status)
        && PyUnicode_GET_LENGTH(status) >= 3) {
        const Py_UCS1 *text = PyUnicode_1BYTE_DATA(status);
        if (text[0] >= '1' && text[0] <= '9' && text[1] >= '0' && text[1] <= '9'
            && text[2] >= '0' && text[2] <= '9') {
            return PyLong_FromLong((text[0] - '0') * 100 + (text[1] - '0') * 10 + text[2] - '0');
        }
    }
    return PyObject_CallOneArg(path->status_code, status);
}

/* start_response's arguments, positional or by name, as the Python path's
 * start(status, headers, exc_info=None) takes them. 0, or -1 (TypeError). */
static int
start_arguments(PyObject *const *args, size_t nargsf, PyObject *kwnames, PyObject **found)
{
    static const char *names[3] = {"status", "headers", "exc_info"};
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "start_response() takes at most 3 arguments (%zd given)",
                     nargs);
        return -1;
    }
    found[0] = found[1] = found[2] = NULL;
    for (Py_ssize_t index = 0; index < nargs; index++) {
        found[index] = args[index];
    }
    Py_ssize_t named = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    for (Py_ssize_t index = 0; index < named; index++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, index);
        int slot = 0;
        while (slot < 3 && PyUnicode_CompareWithASCIIString(name, names[slot]) != 0) {
            slot++;
        }
        if (slot == 3 || found[slot] != NULL) {
            PyErr_Format(PyExc_TypeError, "start_response() got an unexpected or repeated "
                         "argument '%U'", name);
            return -1;
        }
        found[slot] = args[nargs + index];
    }
    if (found[0] == NULL || found[1] == NULL) {
        PyErr_SetString(PyExc_TypeError, "start_response() needs status and headers");
        return -1;
    }
    if (found[2] == NULL) {
        found[2] = Py_None;
    }
    return 0;
}

/* start_response(status, headers, exc_info=None), as the app calls it. */
static PyObject *
response_start(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WsgiResponseObject *self = (WsgiResponseObject *)op;
    PyObject *given[3];
    if (self->item == NULL || self->start_response == NULL) {  /* emptied by the collector */
        PyErr_SetString(PyExc_RuntimeError, "aegis_mw request already collected");
        return NULL;
    }
    if (start_arguments(args, nargsf, kwnames, given) < 0) {
        return NULL;
    }
    PyObject *code = status_code(self->path, given[0]);
    if (code == NULL) {
        return NULL;
    }
    aegis_item_set(self->item, I_STATUS, code);
    Py_DECREF(code);
    Py_XSETREF(self->headers, Py_NewRef(given[1]));
    PyObject *write = PyObject_Vectorcall(self->start_response, given, 3, NULL);
    if (write == NULL) {
        return NULL;
    }
    Py_XSETREF(self->write, write);
    WsgiWriterObject *writer = PyObject_GC_New(WsgiWriterObject, &AegisWsgiWriterType);
    if (writer == NULL) {
        return NULL;
    }
    writer->vectorcall = writer_write;
    writer->response = (WsgiResponseObject *)Py_NewRef(self);
    PyObject_GC_Track(writer);
    return (PyObject *)writer;
}

/* Count `chunk` (a body part on its way out): 0, or -1 with an error set.
 * Bytes are read directly; any other chunk as the Python path reads it, its
 * truth first (which decides the first byte's time), then its len(): the
 * two can disagree, and either can raise. */
static int
count_chunk(WsgiResponseObject *self, PyObject *chunk)
{
    ItemObject *item = self->item;
    Py_ssize_t size = -1;
    int nonempty;
    if (PyBytes_CheckExact(chunk)) {
        size = PyBytes_GET_SIZE(chunk);
        nonempty = size > 0;
    }
    else {
        nonempty = PyObject_IsTrue(chunk);
        if (nonempty < 0) {
            return -1;
        }
    }
    if (nonempty && !item->has_ttfb) {
        if (aegis_now(&self->path->rec, &item->ttfb) < 0) {
            return -1;
        }
        item->has_ttfb = 1;
    }
    if (size < 0) {
        size = PyObject_Length(chunk);
        if (size < 0) {
            return -1;
        }
    }
    item->response_bytes += size;
    return 0;
}

/* write(data): the legacy way to send, counted too. `data` may be named, as
 * the Python path's def write(data) allows. */
static PyObject *
writer_write(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WsgiResponseObject *self = ((WsgiWriterObject *)op)->response;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t named = kwnames != NULL ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs + named != 1
        || (named == 1
            && PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(kwnames, 0), "data") != 0)) {
        PyErr_SetString(PyExc_TypeError, "write() takes exactly one argument (data)");
        return NULL;
    }
    if (self == NULL || self->write == NULL || self->item == NULL) {
        PyErr_SetString(PyExc_AssertionError, "write() before start_response()");
        return NULL;
    }
    PyObject *data = args[0];
    if (count_chunk(self, data) < 0) {
        return NULL;
    }
    return PyObject_Vectorcall(self->write, &data, 1, NULL);
}

/* iter(response) is the response itself: one pass over the app's iterable,
 * which begins at the first next(). So iterating it again goes on where the
 * pass is, as the Python path's single generator does. */
static PyObject *
response_iter(PyObject *op)
{
    return Py_NewRef(op);
}

static PyObject *
response_next(PyObject *op)
{
    WsgiResponseObject *self = (WsgiResponseObject *)op;
    /* Nothing more once closed (the item is queued: counting into it would
     * race the flusher) or once the pass ended or raised: never a second
     * pass, as the Python path's generator is not iterated twice. (The app's
     * iterator is released at close(), not here: releasing it may run code.) */
    if (self->finished || self->exhausted || self->item == NULL) {
        return NULL;
    }
    if (self->iterator == NULL) {
        if (self->result == NULL) {
            return NULL;
        }
        /* iter() at the first next(), where the Python path's generator calls it. */
        self->iterator = PyObject_GetIter(self->result);
        if (self->iterator == NULL) {
            self->exhausted = 1;
            iteration_failed(self);
            return NULL;
        }
    }
    /* Held across the call: the app's code may close the response meanwhile
     * (it holds it as start_response), which releases our reference. */
    PyObject *iterator = Py_NewRef(self->iterator);
    PyObject *chunk = Py_TYPE(iterator)->tp_iternext(iterator);
    Py_DECREF(iterator);
    if (chunk == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
                self->exhausted = 1;
                iteration_failed(self);
                return NULL;
            }
            PyErr_Clear();
        }
        self->exhausted = 1;
        return NULL;
    }
    if (self->finished) {  /* closed while the app made this chunk: it goes out uncounted */
        return chunk;
    }
    if (count_chunk(self, chunk) < 0) {
        Py_DECREF(chunk);
        self->exhausted = 1;
        iteration_failed(self);
        return NULL;
    }
    return chunk;
}

/* The route template: environ["aegis.route"], else the route object an
 * integration left at route_key, by identity (ObjectRouteReader's cache),
 * else the reader; a falsy answer is "<unmatched>". New reference. */
static PyObject *
route_of(WsgiPathObject *path, PyObject *environ)
{
    PyObject *route = Py_XNewRef(PyDict_GetItemWithError(environ, aegis_str.aegis_route));
    if (route == NULL && PyErr_Occurred()) {
        return NULL;
    }
    if ((route == NULL || route == Py_None) && path->route_key != NULL) {
        Py_CLEAR(route);
        PyObject *object = PyDict_GetItemWithError(environ, path->route_key);
        if (object != NULL && object != Py_None) {
            PyObject *key = PyLong_FromVoidPtr(object);
            route = key != NULL ? Py_XNewRef(PyDict_GetItemWithError(path->templates, key)) : NULL;
            Py_XDECREF(key);
        }
        if (route == NULL && PyErr_Occurred()) {
            return NULL;
        }
    }
    if ((route == NULL || route == Py_None) && path->read_route != Py_None) {
        Py_XSETREF(route, PyObject_CallOneArg(path->read_route, environ));
        if (route == NULL) {
            return NULL;
        }
    }
    int named = route != NULL && route != Py_None ? PyObject_IsTrue(route) : 0;
    if (named < 0) {
        Py_DECREF(route);
        return NULL;
    }
    if (!named) {
        Py_XSETREF(route, Py_NewRef(path->unmatched));
    }
    return route;
}

static inline int
is_head(PyObject *method)
{
    if (PyUnicode_CheckExact(method)) {
        return PyUnicode_GET_LENGTH(method) == 4 && PyUnicode_IS_ASCII(method)
            && memcmp(PyUnicode_1BYTE_DATA(method), "HEAD", 4) == 0;
    }
    return PyObject_RichCompareBool(method, aegis_str.method_head, Py_EQ);
}

/* A request that ended well: its route, the client behind a trusted proxy,
 * queued. 0, or -1 with our failure set. */
static int
queue_closed(WsgiResponseObject *self)
{
    WsgiPathObject *path = self->path;
    ItemObject *item = self->item;
    int head = is_head(item->method);
    if (head < 0) {
        return -1;
    }
    if (head) {
        item->response_bytes = 0;
    }
    PyObject *route = route_of(path, self->environ);
    if (route == NULL) {
        return -1;
    }
    aegis_item_set(item, I_ROUTE, route);
    Py_DECREF(route);
    if (path->check_forwarded) {  /* no client address: a Unix socket, maybe trusted */
        PyObject *forwarded = PyObject_CallMethodObjArgs(
            path->rec.owner, aegis_str.forwarded_for, self->environ, item->client, NULL);
        if (forwarded == NULL) {
            return -1;
        }
        aegis_item_set(item, I_FORWARDED, forwarded);
        Py_DECREF(forwarded);
    }
    return aegis_queue_item(&path->rec, item);
}

/* close(): the app's iterable closed (once, even after iteration raised), the
 * clock stopped, the item queued; the app's close() error propagates. */
static PyObject *
response_close(PyObject *op, PyObject *unused)
{
    WsgiResponseObject *self = (WsgiResponseObject *)op;
    if (self->finished || self->item == NULL) {
        Py_RETURN_NONE;
    }
    /* Not returned by the app yet: only the app itself can call this now (it
     * holds this object as its start_response; the Python path's has no
     * close()), and there is nothing of the server's to close. Ending the
     * request here would leave the app's return (or raise) that follows with
     * no environ, and take the request out of flight twice: only the server's
     * close() ends it. */
    if (self->result == NULL) {
        Py_RETURN_NONE;
    }
    self->finished = 1;
    WsgiPathObject *path = self->path;
    PyObject *failure = NULL, *close = NULL;
    if (self->result != NULL) {
        int found = aegis_optional_attr(self->result, aegis_str.close, &close);
        PyObject *done = found > 0 ? PyObject_CallNoArgs(close) : NULL;
        Py_XDECREF(close);
        if (found < 0 || (found > 0 && done == NULL)) {
            failure = take_exception();
        }
        Py_XDECREF(done);
    }
    Py_CLEAR(self->iterator);
    path->rec.in_flight -= 1;
    int status = aegis_now(&path->rec, &self->item->end);
    if (status == 0) {
        self->item->has_end = 1;
        if (failure == NULL) {
            status = queue_closed(self);
        }
        else {
            PyObject *done = PyObject_CallMethodObjArgs(
                path->rec.owner, aegis_str.queue, self->environ, (PyObject *)self->item,
                failure, NULL);
            status = done != NULL ? 0 : -1;
            Py_XDECREF(done);
        }
    }
    Py_CLEAR(self->environ);
    if (failure != NULL) {
        if (status < 0) {
            aegis_keep_original(&path->rec, failure);
        }
        else {
            restore_exception(failure);
        }
        return NULL;
    }
    if (status < 0 && aegis_own_failure(&path->rec) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static Py_ssize_t
response_length(PyObject *op)
{
    WsgiResponseObject *self = (WsgiResponseObject *)op;
    if (self->result == NULL) {
        PyErr_SetString(PyExc_TypeError, "the response has no length yet");
        return -1;
    }
    return PyObject_Length(self->result);
}

static int
response_traverse(WsgiResponseObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->path);
    Py_VISIT(self->item);
    Py_VISIT(self->environ);
    Py_VISIT(self->start_response);
    Py_VISIT(self->write);
    Py_VISIT(self->headers);
    Py_VISIT(self->result);
    Py_VISIT(self->iterator);
    return 0;
}

static int
response_clear(WsgiResponseObject *self)
{
    Py_CLEAR(self->path);
    Py_CLEAR(self->item);
    Py_CLEAR(self->environ);
    Py_CLEAR(self->start_response);
    Py_CLEAR(self->write);
    Py_CLEAR(self->headers);
    Py_CLEAR(self->result);
    Py_CLEAR(self->iterator);
    return 0;
}

static void
response_dealloc(WsgiResponseObject *self)
{
    PyObject_GC_UnTrack(self);
    response_clear(self);
    PyObject_GC_Del(self);
}

static PyMethodDef response_methods[] = {
    {"close", response_close, METH_NOARGS,
     "Close the app's response (once), stop the clock and queue the request."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject AegisWsgiResponseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.WsgiResponse",
    .tp_doc = "The app's start_response and the server's response iterable, timed to close().",
    .tp_basicsize = sizeof(WsgiResponseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
        | Py_TPFLAGS_BASETYPE,
    .tp_vectorcall_offset = offsetof(WsgiResponseObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)response_dealloc,
    .tp_traverse = (traverseproc)response_traverse,
    .tp_clear = (inquiry)response_clear,
    .tp_iter = response_iter,
    .tp_iternext = response_next,
    .tp_methods = response_methods,
};

static PySequenceMethods sized_as_sequence = {
    .sq_length = response_length,
};

/* The same, with the length of the app's iterable (every slot set here, not
 * inherited, so nothing depends on what PyType_Ready copies). */
PyTypeObject AegisWsgiSizedResponseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.WsgiSizedResponse",
    .tp_doc = "A WsgiResponse whose app iterable has a length, which it shows.",
    .tp_basicsize = sizeof(WsgiResponseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_base = &AegisWsgiResponseType,
    .tp_vectorcall_offset = offsetof(WsgiResponseObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)response_dealloc,
    .tp_traverse = (traverseproc)response_traverse,
    .tp_clear = (inquiry)response_clear,
    .tp_iter = response_iter,
    .tp_iternext = response_next,
    .tp_methods = response_methods,
    .tp_as_sequence = &sized_as_sequence,
};

static int
writer_traverse(WsgiWriterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->response);
    return 0;
}

static int
writer_clear(WsgiWriterObject *self)
{
    Py_CLEAR(self->response);
    return 0;
}

static void
writer_dealloc(WsgiWriterObject *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    PyObject_GC_Del(self);
}

PyTypeObject AegisWsgiWriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.WsgiWriter",
    .tp_doc = "The write() callable start_response returns: counts, then hands on.",
    .tp_basicsize = sizeof(WsgiWriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(WsgiWriterObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
};
