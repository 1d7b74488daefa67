/* WsgiResponse: the response iterable the server gets for one WSGI request.
 * It counts the chunks of the app's iterable as they pass and stamps the
 * first byte; its close() closes the app's iterable once, stops the clock and
 * queues the item. It behaves as the Python path's Recorded does, whose pass
 * over the app's iterable is a generator: one pass, begun at the first next();
 * no re-entry while a next() runs (ValueError "generator already executing");
 * the app's iterator released as soon as the pass ends; a StopIteration raised
 * while counting turned into a RuntimeError (PEP 479), never taken for the end
 * of the body; a GeneratorExit from the app let through unrecorded.
 *
 * The app never gets this object (its start_response is wsgi_start.c's), so
 * nothing the app holds can iterate or close it. Whether the app's iterable
 * has a length is known when the app returns, when this object is made: a
 * WsgiSizedResponse (the same layout, with __len__) if it has one, so that a
 * server may size the response by it, as without us. */
#include "hotpath.h"

/* The app raised, from its call (the exception is set): recorded by the
 * Python path's _queue, and left set, unchanged. */
void
aegis_wsgi_app_raised(WsgiPathObject *path, ItemObject *item, PyObject *environ)
{
    path->rec.in_flight -= 1;
    PyObject *exc = take_exception();
    PyObject *done = PyObject_CallMethodObjArgs(
        path->rec.owner, aegis_str.queue, environ, (PyObject *)item, exc, NULL);
    if (done == NULL) {
        aegis_keep_original(&path->rec, exc);
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
 * was taken (*answer set), 0 when not, -1 on an error. No response object
 * exists yet: code isinstance() runs has nothing of ours to close. */
static int
file_response(WsgiPathObject *path, ItemObject *item, PyObject *environ, WsgiStartObject *start,
              PyObject *result, PyObject **answer)
{
    PyObject *wrapper = PyDict_GetItemWithError(environ, aegis_str.file_wrapper);
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
    /* The headers as they are now (the Python path reads them after isinstance()
     * too, which could have called start_response again); held across the call. */
    PyObject *headers = Py_NewRef(start->headers != NULL ? start->headers : Py_None);
    PyObject *watched = PyObject_CallMethodObjArgs(
        path->rec.owner, aegis_str.watch_file, environ, (PyObject *)item, result, headers, NULL);
    Py_DECREF(headers);
    if (watched == NULL) {
        return -1;
    }
    if (watched == Py_None) {  /* its close() could not be replaced: wrap it */
        Py_DECREF(watched);
        return 0;
    }
    /* The Python path counts it in flight now, and records it at its close(). */
    path->rec.in_flight -= 1;
    *answer = watched;
    return 1;
}

/* The app returned `result`: what the server gets (a new reference). */
PyObject *
aegis_wsgi_respond(WsgiPathObject *path, ItemObject *item, PyObject *environ,
                   WsgiStartObject *start, PyObject *result)
{
    PyObject *answer = NULL;
    int taken = file_response(path, item, environ, start, result, &answer);
    if (taken > 0) {
        return answer;
    }
    if (taken < 0) {  /* a failure of ours: counted, and the app's answer goes out unrecorded */
        path->rec.in_flight -= 1;
        if (aegis_own_failure(&path->rec) < 0) {
            return NULL;
        }
        return Py_NewRef(result);
    }
    PyTypeObject *type = has_length(result) ? &AegisWsgiSizedResponseType : &AegisWsgiResponseType;
    WsgiResponseObject *self = PyObject_GC_New(WsgiResponseObject, type);
    if (self == NULL) {
        path->rec.in_flight -= 1;
        return NULL;
    }
    self->path = (WsgiPathObject *)Py_NewRef(path);
    self->item = (ItemObject *)Py_NewRef(item);
    self->environ = Py_NewRef(environ);
    self->result = Py_NewRef(result);
    self->iterator = NULL;
    self->finished = 0;
    self->exhausted = 0;
    self->running = 0;
    PyObject_GC_Track(self);
    return (PyObject *)self;
}

/* The pass over the app's iterable is over: its iterator released, as the
 * Python path's generator releases it when its loop ends. Releasing it may
 * run the app's code: an exception set is kept aside meanwhile. */
static void
end_pass(WsgiResponseObject *self)
{
    self->exhausted = 1;
    if (self->iterator == NULL) {
        return;
    }
    PyObject *pending = PyErr_Occurred() ? take_exception() : NULL;
    Py_CLEAR(self->iterator);
    if (pending != NULL) {
        restore_exception(pending);
    }
}

/* Iterating the app's response raised (the exception is set), with `chunk`
 * in hand or NULL: the pass ends; its error and a 500 when nothing was sent
 * are recorded by the Python path's own code (not for a GeneratorExit, which
 * the Python path's generator lets through); a StopIteration leaves as the
 * RuntimeError the generator would raise. Returns NULL, the error set. */
static PyObject *
pass_failed(WsgiResponseObject *self, PyObject *chunk)
{
    end_pass(self);
    if (!PyErr_ExceptionMatches(PyExc_GeneratorExit)) {
        PyObject *exc = take_exception();
        PyObject *done = PyObject_CallMethodObjArgs(
            self->path->rec.owner, aegis_str.iteration_failed, (PyObject *)self->item, exc, NULL);
        if (done == NULL) {
            aegis_keep_original(&self->path->rec, exc);
        }
        else {
            Py_DECREF(done);
            restore_exception(exc);
        }
        if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
            stop_iteration_to_runtime_error("generator raised StopIteration");
        }
    }
    Py_XDECREF(chunk);
    return NULL;
}

/* One step of the pass: the next chunk, counted (a new reference), or NULL
 * at its end (no error set) or on an error. */
static PyObject *
next_chunk(WsgiResponseObject *self)
{
    if (self->iterator == NULL) {
        /* iter() at the first next(), where the Python path's generator calls it. */
        self->iterator = PyObject_GetIter(self->result);
        if (self->iterator == NULL) {
            return pass_failed(self, NULL);
        }
    }
    PyObject *iterator = Py_NewRef(self->iterator);
    PyObject *chunk = Py_TYPE(iterator)->tp_iternext(iterator);
    Py_DECREF(iterator);
    if (chunk == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
                return pass_failed(self, NULL);
            }
            PyErr_Clear();
        }
        end_pass(self);
        return NULL;
    }
    if (self->finished) {  /* closed while the app made this chunk: it goes out uncounted */
        return chunk;
    }
    if (aegis_wsgi_count_chunk(self->path, self->item, chunk) < 0) {
        return pass_failed(self, chunk);
    }
    return chunk;
}

static PyObject *
response_next(PyObject *op)
{
    WsgiResponseObject *self = (WsgiResponseObject *)op;
    if (self->running) {  /* next() again from inside a next(): refused, as a generator does */
        PyErr_SetString(PyExc_ValueError, "generator already executing");
        return NULL;
    }
    /* Nothing more once closed (the item is queued: counting into it would
     * race the flusher) or once the pass ended or raised: never a second
     * pass, as the Python path's generator is not iterated twice. */
    if (self->finished || self->exhausted || self->item == NULL || self->result == NULL) {
        return NULL;
    }
    if (Py_EnterRecursiveCall(" while iterating a WSGI response")) {
        return NULL;
    }
    self->running = 1;
    PyObject *chunk = next_chunk(self);
    self->running = 0;
    Py_LeaveRecursiveCall();
    return chunk;
}

/* close(): the pass ended and the app's iterable closed (once, even after
 * iteration raised), the clock stopped, the item queued; the app's close()
 * error propagates. */
static PyObject *
response_close(PyObject *op, PyObject *unused)
{
    WsgiResponseObject *self = (WsgiResponseObject *)op;
    if (self->finished || self->item == NULL || self->path == NULL) {
        Py_RETURN_NONE;
    }
    self->finished = 1;
    WsgiPathObject *path = self->path;
    PyObject *failure = NULL;
    if (self->running) {
        /* Closed from inside its own next() (through the app's code): refused
         * as the Python path's generator refuses it, the app's iterable left
         * open, and the request recorded with that error. */
        PyErr_SetString(PyExc_ValueError, "generator already executing");
        failure = take_exception();
    }
    else {
        /* The pass ends first (the app's iterator released), then the app's
         * iterable is closed, in the Python path's order. */
        Py_CLEAR(self->iterator);
        PyObject *close = NULL;
        int found = aegis_optional_attr(self->result, aegis_str.close, &close);
        PyObject *done = found > 0 ? PyObject_CallNoArgs(close) : NULL;
        Py_XDECREF(close);
        if (found < 0 || (found > 0 && done == NULL)) {
            failure = take_exception();
        }
        Py_XDECREF(done);
    }
    /* Held: the app's close() could have let go of the last reference elsewhere. */
    Py_INCREF(path);
    path->rec.in_flight -= 1;
    int status = aegis_now(&path->rec, &self->item->end);
    if (status == 0) {
        self->item->has_end = 1;
        if (failure == NULL) {
            status = aegis_wsgi_queue_closed(path, self->item, self->environ);
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
    PyObject *answer = NULL;
    if (failure != NULL) {
        if (status < 0) {
            aegis_keep_original(&path->rec, failure);
        }
        else {
            restore_exception(failure);
        }
    }
    else if (status == 0 || aegis_own_failure(&path->rec) == 0) {
        answer = Py_NewRef(Py_None);
    }
    Py_DECREF(path);
    return answer;
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
    .tp_doc = "The response iterable a WSGI server gets, counted as it passes, timed to close().",
    .tp_basicsize = sizeof(WsgiResponseObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_BASETYPE,
    .tp_dealloc = (destructor)response_dealloc,
    .tp_traverse = (traverseproc)response_traverse,
    .tp_clear = (inquiry)response_clear,
    .tp_iter = PyObject_SelfIter,
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
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_base = &AegisWsgiResponseType,
    .tp_dealloc = (destructor)response_dealloc,
    .tp_traverse = (traverseproc)response_traverse,
    .tp_clear = (inquiry)response_clear,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = response_next,
    .tp_methods = response_methods,
    .tp_as_sequence = &sized_as_sequence,
};
