/* Sender: the app's `send`. It notes status, times and bytes of the usual
 * messages and returns the server's own awaitable untouched (no coroutine of
 * ours in between); every other call or message goes through the Python
 * path's own send observer (observers.observe_send), so it behaves the same. */
#include "hotpath.h"

/* True when the exact str `kind` equals the ASCII `expected`. */
static inline int
kind_is(PyObject *kind, const char *expected, Py_ssize_t length)
{
    return PyUnicode_GET_LENGTH(kind) == length
        && PyUnicode_KIND(kind) == PyUnicode_1BYTE_KIND
        && memcmp(PyUnicode_1BYTE_DATA(kind), expected, (size_t)length) == 0;
}

/* message[key] as a new reference, or NULL: absent (*failed unchanged) or an
 * error (*failed set). Not called once *failed is set. */
static inline PyObject *
lookup(PyObject *message, PyObject *key, int *failed)
{
    if (*failed) {
        return NULL;
    }
    PyObject *value = PyDict_GetItemWithError(message, key);
    if (value == NULL) {
        *failed = PyErr_Occurred() != NULL;
        return NULL;
    }
    return Py_NewRef(value);
}

/* more_body as the fast path understands it: 0 or 1, or -1 for anything but
 * absent, None or a bool (the Python observer decides then). */
static inline int
more_body(PyObject *value)
{
    if (value == NULL || value == Py_None || value == Py_False) {
        return 0;
    }
    return value == Py_True ? 1 : -1;
}

/* Add `size` bytes to the response's count, when the item's long long holds
 * the sum: 1, else 0 and nothing changed (the Python observer adds it). */
static inline int
add_bytes(ItemObject *item, long long size)
{
    return item->response_count == NULL
        && !aegis_add_overflows(item->response_bytes, size, &item->response_bytes);
}

/* The response is complete: stop the clock. */
static inline int
mark_end(SenderObject *self)
{
    if (aegis_now(&self->path->rec, &self->item->end) < 0) {
        return -1;
    }
    self->item->has_end = 1;
    return 0;
}

/* Note what a message the app sends says, for the usual message: an exact dict
 * whose fields have the types servers and frameworks use. Returns 1 when noted,
 * 0 when it is not such a message (nothing was changed: the Python observer
 * takes it), -1 on an error (raised in the app, as on the Python path). */
static int
note_sent(SenderObject *self, PyObject *message)
{
    if (!PyDict_CheckExact(message)) {
        return 0;
    }
    int failed = 0, noted = 1, more;
    ItemObject *item = self->item;
    PyObject *kind = lookup(message, aegis_str.type, &failed);
    PyObject *first = NULL, *second = NULL;
    if (failed) {
        goto error;
    }
    if (kind == NULL || !PyUnicode_CheckExact(kind)
#if PY_VERSION_HEX < 0x030C0000
        || !PyUnicode_IS_READY(kind)
#endif
    ) {
        noted = 0;  /* a missing or odd "type": the Python observer raises as it should */
    }
    else if (kind_is(kind, "http.response.body", 18)) {
        first = lookup(message, aegis_str.body, &failed);
        second = lookup(message, aegis_str.more_body, &failed);
        if (failed) {
            goto error;
        }
        more = more_body(second);
        int bytes = first != NULL && first != Py_None;
        if ((bytes && !PyBytes_CheckExact(first)) || more < 0
            || (bytes && !add_bytes(item, PyBytes_GET_SIZE(first)))) {
            noted = 0;
        }
        else if (!more && mark_end(self) < 0) {
            goto error;
        }
    }
    else if (kind_is(kind, "http.response.start", 19)) {
        first = lookup(message, aegis_str.status, &failed);
        if (failed) {
            goto error;
        }
        if (first == NULL) {
            noted = 0;  /* KeyError, from the Python observer */
        }
        else {
            aegis_item_set(item, I_STATUS, first);
            if (aegis_now(&self->path->rec, &item->ttfb) < 0) {
                goto error;
            }
            item->has_ttfb = 1;
            if (aegis_trace_at_response(&self->path->rec, item) < 0) {
                goto error;
            }
        }
    }
    else if (kind_is(kind, "http.response.pathsend", 22)) {
        /* The whole file in one message; its size is not in it. */
        if (mark_end(self) < 0) {
            goto error;
        }
    }
    else if (kind_is(kind, "http.response.zerocopysend", 26)) {
        first = lookup(message, aegis_str.count, &failed);
        second = lookup(message, aegis_str.more_body, &failed);
        if (failed) {
            goto error;
        }
        more = more_body(second);
        /* An exact int that fits, added if the sum fits; anything else (past 64
         * bits, a float, a bool, a str) is the Python observer's to add, as
         * Python adds it (or to fail as it fails). */
        long long count = 0;
        int odd = 0;
        if (first != NULL && first != Py_None) {
            if (PyLong_CheckExact(first)) {
                count = PyLong_AsLongLongAndOverflow(first, &odd);  /* cannot fail */
            }
            else {
                odd = 1;
            }
        }
        if (odd || more < 0 || !add_bytes(item, count)) {
            noted = 0;
        }
        else if (!more && mark_end(self) < 0) {
            goto error;
        }
    }
    Py_XDECREF(kind);
    Py_XDECREF(first);
    Py_XDECREF(second);
    return noted;
error:
    Py_XDECREF(kind);
    Py_XDECREF(first);
    Py_XDECREF(second);
    return -1;
}

PyObject *
aegis_sender_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    SenderObject *self = (SenderObject *)op;
    if (self->item == NULL || self->path == NULL) {  /* emptied by the collector */
        PyErr_SetString(PyExc_RuntimeError, "aegis_mw request already collected");
        return NULL;
    }
    if (PyVectorcall_NARGS(nargsf) == 1 && kwnames == NULL) {
        int noted = note_sent(self, args[0]);
        if (noted < 0) {
            return NULL;
        }
        if (noted > 0) {
            return PyObject_Vectorcall(self->send, args, nargsf, NULL);
        }
    }
    HttpPathObject *path = self->path;
    PyObject *source = PyObject_GetAttr(path->rec.owner, aegis_str.trace_source);
    if (source == NULL) {
        return NULL;
    }
    PyObject *observer = PyObject_CallFunctionObjArgs(
        path->observe_send, (PyObject *)self->item, path->rec.clock, self->send, source, NULL);
    Py_DECREF(source);
    if (observer == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(observer, args, nargsf, kwnames);
    Py_DECREF(observer);
    return result;
}

static int
sender_traverse(SenderObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->path);
    Py_VISIT(self->item);
    Py_VISIT(self->send);
    return 0;
}

static int
sender_clear(SenderObject *self)
{
    Py_CLEAR(self->path);
    Py_CLEAR(self->item);
    Py_CLEAR(self->send);
    return 0;
}

static void
sender_dealloc(SenderObject *self)
{
    PyObject_GC_UnTrack(self);
    sender_clear(self);
    PyObject_GC_Del(self);
}

PyTypeObject AegisSenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.Sender",
    .tp_doc = "The app's send: notes status, times and bytes, then hands the message on.",
    .tp_basicsize = sizeof(SenderObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(SenderObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)sender_dealloc,
    .tp_traverse = (traverseproc)sender_traverse,
    .tp_clear = (inquiry)sender_clear,
};
