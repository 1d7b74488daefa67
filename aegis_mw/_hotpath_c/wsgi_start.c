/* StartResponse: the start_response a WSGI app is given, one per request. It
 * notes the status and hands the call to the server's start_response; the
 * write() it returns (Writer) counts what the app writes. It is only a
 * callable, as the Python path's function is: not iterable, no close(), and
 * it leads to nothing the server iterates (wsgi_response.c), so an app that
 * hands it back as its body gets the Python path's TypeError, and an app's
 * generator that holds it (or write) makes no reference cycle with the
 * response. The chunk counting both share is here too. */
#include "hotpath.h"

static PyObject *start_call(PyObject *op, PyObject *const *args, size_t nargsf,
                            PyObject *kwnames);
static PyObject *writer_call(PyObject *op, PyObject *const *args, size_t nargsf,
                             PyObject *kwnames);

WsgiStartObject *
aegis_wsgi_start_new(WsgiPathObject *path, ItemObject *item, PyObject *start_response)
{
    WsgiStartObject *self = PyObject_GC_New(WsgiStartObject, &AegisWsgiStartType);
    if (self == NULL) {
        return NULL;
    }
    self->vectorcall = start_call;
    self->path = (WsgiPathObject *)Py_NewRef(path);
    self->item = (ItemObject *)Py_NewRef(item);
    self->start_response = Py_NewRef(start_response);
    self->write = NULL;
    self->headers = NULL;
    self->writer = NULL;
    PyObject_GC_Track(self);
    return self;
}

/* Count `chunk` (a body part on its way out): 0, or -1 with an error set.
 * Bytes are read directly; any other chunk as the Python path's count_chunk()
 * reads it, its truth (which decides the first byte's time) then its len():
 * the two can disagree. One whose truth or length raises an Exception (None,
 * an int: no body a server sends) counts as nothing and goes on unchanged,
 * so that the server's own check of it answers, not an error of ours. */
int
aegis_wsgi_count_chunk(WsgiPathObject *path, ItemObject *item, PyObject *chunk)
{
    Py_ssize_t size;
    int nonempty;
    if (PyBytes_CheckExact(chunk)) {
        size = PyBytes_GET_SIZE(chunk);
        nonempty = size > 0;
    }
    else {
        nonempty = PyObject_IsTrue(chunk);
        size = nonempty < 0 ? -1 : PyObject_Length(chunk);
        if (size < 0) {
            if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                return -1;
            }
            PyErr_Clear();
            return 0;
        }
    }
    if (nonempty && !item->has_ttfb) {
        if (aegis_now(&path->rec, &item->ttfb) < 0) {
            return -1;
        }
        item->has_ttfb = 1;
    }
    return aegis_item_add_bytes(item, I_RESPONSE_BYTES, size);
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

/* The write() for the app: the live one if the app still holds it (the
 * Python path returns its one closure every time), else a new one. */
static PyObject *
writer_of(WsgiStartObject *self)
{
    if (self->writer != NULL) {
        return Py_NewRef((PyObject *)self->writer);
    }
    WsgiWriterObject *writer = PyObject_GC_New(WsgiWriterObject, &AegisWsgiWriterType);
    if (writer == NULL) {
        return NULL;
    }
    writer->vectorcall = writer_call;
    writer->start = (WsgiStartObject *)Py_NewRef(self);
    self->writer = writer;  /* borrowed: the writer forgets itself here when freed */
    PyObject_GC_Track(writer);
    return (PyObject *)writer;
}

/* start_response(status, headers, exc_info=None), as the app calls it. */
static PyObject *
start_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WsgiStartObject *self = (WsgiStartObject *)op;
    if (self->item == NULL || self->start_response == NULL) {  /* emptied by the collector */
        PyErr_SetString(PyExc_RuntimeError, "aegis_mw request already collected");
        return NULL;
    }
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *given[3], *bound = NULL;
    if (kwnames == NULL && (nargs == 2 || nargs == 3)) {
        given[0] = args[0];
        given[1] = args[1];
        given[2] = nargs == 3 ? args[2] : Py_None;
    }
    else {
        /* Keywords, or a wrong count: bound by the Python path's own signature,
         * which also refuses a bad call with its TypeError, word for word. */
        bound = PyObject_Vectorcall(self->path->start_arguments, args, nargsf, kwnames);
        if (bound == NULL) {
            return NULL;
        }
        if (!PyTuple_CheckExact(bound) || PyTuple_GET_SIZE(bound) != 3) {
            Py_DECREF(bound);
            PyErr_SetString(PyExc_SystemError, "aegis_mw: start_arguments() must give 3 values");
            return NULL;
        }
        for (int index = 0; index < 3; index++) {
            given[index] = PyTuple_GET_ITEM(bound, index);
        }
    }
    PyObject *answer = NULL;
    PyObject *code = status_code(self->path, given[0]);
    if (code != NULL) {
        aegis_item_set(self->item, I_STATUS, code);
        Py_DECREF(code);
        if (aegis_trace_at_response(&self->path->rec, self->item) < 0) {
            Py_XDECREF(bound);
            return NULL;
        }
        Py_XSETREF(self->headers, Py_NewRef(given[1]));
        PyObject *write = PyObject_Vectorcall(self->start_response, given, 3, NULL);
        if (write != NULL) {
            Py_XSETREF(self->write, write);
            answer = writer_of(self);
        }
    }
    Py_XDECREF(bound);
    return answer;
}

static int
start_traverse(WsgiStartObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->path);
    Py_VISIT(self->item);
    Py_VISIT(self->start_response);
    Py_VISIT(self->write);
    Py_VISIT(self->headers);
    return 0;
}

static int
start_clear(WsgiStartObject *self)
{
    Py_CLEAR(self->path);
    Py_CLEAR(self->item);
    Py_CLEAR(self->start_response);
    Py_CLEAR(self->write);
    Py_CLEAR(self->headers);
    return 0;
}

static void
start_dealloc(WsgiStartObject *self)
{
    PyObject_GC_UnTrack(self);
    start_clear(self);
    PyObject_GC_Del(self);
}

PyTypeObject AegisWsgiStartType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.StartResponse",
    .tp_doc = "The start_response a WSGI app is given: notes the status, calls the server's.",
    .tp_basicsize = sizeof(WsgiStartObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(WsgiStartObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)start_dealloc,
    .tp_traverse = (traverseproc)start_traverse,
    .tp_clear = (inquiry)start_clear,
};

/* write(data): the legacy way to send, counted too; None, as the Python path's
 * write() returns. Any call but write(data) goes through the Python path's
 * signature, for its TypeError. */
static PyObject *
writer_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    WsgiStartObject *start = ((WsgiWriterObject *)op)->start;
    if (start == NULL || start->item == NULL || start->path == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "aegis_mw request already collected");
        return NULL;
    }
    PyObject *data;
    if (kwnames == NULL && PyVectorcall_NARGS(nargsf) == 1) {
        data = Py_NewRef(args[0]);
    }
    else {
        data = PyObject_Vectorcall(start->path->write_arguments, args, nargsf, kwnames);
        if (data == NULL) {
            return NULL;
        }
    }
    /* Held across the calls: the app's code (a chunk's __len__) could let go of
     * the writer, and with it the last reference to `start`. */
    Py_INCREF(start);
    PyObject *done = NULL;
    if (aegis_wsgi_count_chunk(start->path, start->item, data) == 0) {
        PyObject *write = Py_XNewRef(start->write);
        done = write != NULL ? PyObject_CallOneArg(write, data) : NULL;
        Py_XDECREF(write);
        if (write == NULL) {
            PyErr_SetString(PyExc_AssertionError, "write() before start_response()");
        }
    }
    Py_DECREF(start);
    Py_DECREF(data);
    if (done == NULL) {
        return NULL;
    }
    Py_DECREF(done);
    Py_RETURN_NONE;
}

static int
writer_traverse(WsgiWriterObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->start);
    return 0;
}

static int
writer_clear(WsgiWriterObject *self)
{
    if (self->start != NULL && self->start->writer == self) {
        self->start->writer = NULL;
    }
    Py_CLEAR(self->start);
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
    .tp_name = "aegis_mw._hotpath.Writer",
    .tp_doc = "The write() callable start_response returns: counts, then hands on.",
    .tp_basicsize = sizeof(WsgiWriterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(WsgiWriterObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
};
