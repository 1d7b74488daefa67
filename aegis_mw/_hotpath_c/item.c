/* HttpItem: a request's state while it runs and its inbox item afterwards,
 * indexable like the 14-element list of aegis_mw/core/items.py.
 *
 * It is a garbage-collected type, because what the app or a route reader puts
 * in it (a status object, a route) could in principle lead back to it. But once
 * queued, an item that holds only atoms (str, int, float, bool, None, and the
 * client as a tuple of those) cannot be part of a cycle, so it leaves the
 * collector's lists, as CPython does for such tuples; storing anything else in
 * it later puts it back. Byte counts are long longs, or (past 64 bits, or
 * not ints) objects, as the Python path's list would hold them. */
#include "hotpath.h"

static inline int
is_atom(PyObject *value)
{
    return value == NULL || value == Py_None || PyUnicode_CheckExact(value)
        || PyBytes_CheckExact(value) || PyLong_CheckExact(value) || PyFloat_CheckExact(value) || PyBool_Check(value);
}

static int
is_atomic_field(Py_ssize_t index, PyObject *value)
{
    if (index != I_CLIENT || !PyTuple_CheckExact(value)) {
        return is_atom(value);
    }
    for (Py_ssize_t position = 0; position < PyTuple_GET_SIZE(value); position++) {
        if (!is_atom(PyTuple_GET_ITEM(value, position))) {
            return 0;
        }
    }
    return 1;
}

void
aegis_untrack_if_atomic(ItemObject *item)
{
    if (PyObject_GC_IsTracked((PyObject *)item) && is_atom(item->method)
        && is_atom(item->route) && is_atom(item->path) && is_atom(item->status)
        && is_atomic_field(I_CLIENT, item->client) && is_atom(item->forwarded)
        && is_atom(item->error) && is_atom(item->trace) && is_atom(item->request_count)
        && is_atom(item->response_count)) {
        PyObject_GC_UnTrack(item);
    }
}

/* The object slot of a byte count, and its native field. */
static inline PyObject **
count_object(ItemObject *item, Py_ssize_t index)
{
    return index == I_REQUEST_BYTES ? &item->request_count : &item->response_count;
}

static inline long long *
count_native(ItemObject *item, Py_ssize_t index)
{
    return index == I_REQUEST_BYTES ? &item->request_bytes : &item->response_bytes;
}

static PyObject *item_getitem(PyObject *op, Py_ssize_t index);

/* item[index] = value for a byte count, as a list stores it: an exact int a
 * long long holds in the native field, anything else as it is. 0, or -1. */
int
aegis_item_set_bytes(ItemObject *item, Py_ssize_t index, PyObject *value)
{
    PyObject **slot = count_object(item, index);
    if (PyLong_CheckExact(value)) {
        int overflow = 0;
        long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (number == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (!overflow) {
            *count_native(item, index) = number;
            Py_CLEAR(*slot);
            return 0;
        }
    }
    if (!PyObject_GC_IsTracked((PyObject *)item) && !is_atom(value)) {
        PyObject_GC_Track(item);  /* it may now be part of a cycle */
    }
    Py_XSETREF(*slot, Py_NewRef(value));
    return 0;
}

/* item[index] += size for a byte count: in the native field while it holds
 * the sum, else as the Python path's `item[index] += size` adds. 0, or -1. */
int
aegis_item_add_bytes(ItemObject *item, Py_ssize_t index, long long size)
{
    long long *native = count_native(item, index);
    if (*count_object(item, index) == NULL && !aegis_add_overflows(*native, size, native)) {
        return 0;
    }
    PyObject *current = item_getitem((PyObject *)item, index);
    PyObject *added = current != NULL ? PyLong_FromLongLong(size) : NULL;
    PyObject *total = added != NULL ? PyNumber_InPlaceAdd(current, added) : NULL;
    Py_XDECREF(current);
    Py_XDECREF(added);
    if (total == NULL) {
        return -1;
    }
    int status = aegis_item_set_bytes(item, index, total);
    Py_DECREF(total);
    return status;
}

/* item[index] = 0 for a byte count (a HEAD response sends no body). */
void
aegis_item_zero_bytes(ItemObject *item, Py_ssize_t index)
{
    *count_native(item, index) = 0;
    Py_CLEAR(*count_object(item, index));
}

ItemObject *
aegis_new_item(PyObject *method, PyObject *request_path, PyObject *client)
{
    ItemObject *item = aegis_reused_item();  /* see free_lists.c */
    if (item == NULL) {
        item = PyObject_GC_New(ItemObject, &AegisItemType);
        if (item == NULL) {
            return NULL;
        }
    }
    item->method = Py_NewRef(method);
    item->route = NULL;
    item->path = Py_NewRef(request_path);
    item->status = PyLong_FromLong(0);
    item->client = Py_NewRef(client);
    item->forwarded = NULL;
    item->error = Py_NewRef(aegis_str.empty);
    item->trace = NULL;
    item->start = item->ttfb = item->end = 0.0;
    item->request_bytes = item->response_bytes = 0;
    item->request_count = item->response_count = NULL;
    item->has_ttfb = item->has_end = item->disconnected = 0;
    PyObject_GC_Track(item);
    return item;
}

/* len(chunk), the chunk held meanwhile (its __len__ may change the container
 * it came from): >= 0, or -1 with an error set. */
static Py_ssize_t
chunk_size(PyObject *chunk)
{
    if (PyBytes_CheckExact(chunk)) {
        return PyBytes_GET_SIZE(chunk);
    }
    Py_INCREF(chunk);
    Py_ssize_t size = PyObject_Length(chunk);
    Py_DECREF(chunk);
    return size;
}

/* total += size: in the long long while it holds the sum, else (past 64
 * bits, with chunks that claim to be huge) in a Python int, as sum() adds.
 * 0, or -1 with an error set. */
static int
add_size(long long *total, PyObject **big, Py_ssize_t size)
{
    if (*big == NULL && !aegis_add_overflows(*total, size, total)) {
        return 0;
    }
    if (*big == NULL && (*big = PyLong_FromLongLong(*total)) == NULL) {
        return -1;
    }
    PyObject *added = PyLong_FromSsize_t(size);
    PyObject *sum = added != NULL ? PyNumber_Add(*big, added) : NULL;
    Py_XDECREF(added);
    Py_SETREF(*big, sum);
    return sum != NULL ? 0 : -1;
}

/* item[index] = sum(map(len, chunks)) for a byte count (Django's body, its
 * HttpResponse._container, as the Python path counts it): 0, or -1 with an
 * error set (the item unchanged). */
int
aegis_item_count_chunks(ItemObject *item, Py_ssize_t index, PyObject *container)
{
    long long total = 0;
    PyObject *big = NULL;
    int status = 0;
    if (PyList_CheckExact(container)) {
        /* By index, the size asked each time, as a list's iterator does. */
        for (Py_ssize_t index = 0; status == 0 && index < PyList_GET_SIZE(container); index++) {
            Py_ssize_t size = chunk_size(PyList_GET_ITEM(container, index));
            status = size < 0 ? -1 : add_size(&total, &big, size);
        }
    }
    else {
        PyObject *iterator = PyObject_GetIter(container);
        if (iterator == NULL) {
            return -1;
        }
        PyObject *chunk;
        while (status == 0 && (chunk = PyIter_Next(iterator)) != NULL) {
            Py_ssize_t size = chunk_size(chunk);
            Py_DECREF(chunk);
            status = size < 0 ? -1 : add_size(&total, &big, size);
        }
        Py_DECREF(iterator);
        if (status == 0 && PyErr_Occurred()) {
            status = -1;
        }
    }
    if (status == 0) {
        if (big != NULL) {
            status = aegis_item_set_bytes(item, index, big);
        }
        else {
            aegis_item_zero_bytes(item, index);
            *count_native(item, index) = total;
        }
    }
    Py_XDECREF(big);
    return status;
}

static int
item_traverse(ItemObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->method);
    Py_VISIT(self->route);
    Py_VISIT(self->path);
    Py_VISIT(self->status);
    Py_VISIT(self->client);
    Py_VISIT(self->forwarded);
    Py_VISIT(self->error);
    Py_VISIT(self->trace);
    Py_VISIT(self->request_count);
    Py_VISIT(self->response_count);
    return 0;
}

static int
item_clear(ItemObject *self)
{
    Py_CLEAR(self->method);
    Py_CLEAR(self->route);
    Py_CLEAR(self->path);
    Py_CLEAR(self->status);
    Py_CLEAR(self->client);
    Py_CLEAR(self->forwarded);
    Py_CLEAR(self->error);
    Py_CLEAR(self->trace);
    Py_CLEAR(self->request_count);
    Py_CLEAR(self->response_count);
    return 0;
}

static void
item_dealloc(ItemObject *self)
{
    PyObject_GC_UnTrack(self);
    item_clear(self);
    if (!aegis_keep_item(self)) {
        PyObject_GC_Del(self);
    }
}

static Py_ssize_t
item_length(PyObject *self)
{
    return I_FIELDS;
}

static PyObject *
optional(PyObject *value)
{
    return Py_NewRef(value != NULL ? value : Py_None);
}

static PyObject *
item_getitem(PyObject *op, Py_ssize_t index)
{
    ItemObject *self = (ItemObject *)op;
    switch (index) {
    case I_METHOD: return optional(self->method);
    case I_ROUTE: return optional(self->route);
    case I_PATH: return optional(self->path);
    case I_STATUS: return optional(self->status);
    case I_START: return PyFloat_FromDouble(self->start);
    case I_TTFB: return self->has_ttfb ? PyFloat_FromDouble(self->ttfb) : Py_NewRef(Py_None);
    case I_END: return self->has_end ? PyFloat_FromDouble(self->end) : Py_NewRef(Py_None);
    case I_REQUEST_BYTES:
        return self->request_count != NULL ? Py_NewRef(self->request_count)
                                           : PyLong_FromLongLong(self->request_bytes);
    case I_RESPONSE_BYTES:
        return self->response_count != NULL ? Py_NewRef(self->response_count)
                                            : PyLong_FromLongLong(self->response_bytes);
    case I_CLIENT: return optional(self->client);
    case I_FORWARDED: return optional(self->forwarded);
    case I_ERROR: return optional(self->error);
    case I_DISCONNECTED: return PyBool_FromLong(self->disconnected);
    case I_TRACE: return optional(self->trace);
    }
    PyErr_SetString(PyExc_IndexError, "inbox item index out of range");
    return NULL;
}

static int
set_time(double *slot, char *present, PyObject *value)
{
    if (value == Py_None && present != NULL) {
        *present = 0;
        return 0;
    }
    double number = PyFloat_AsDouble(value);
    if (number == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    *slot = number;
    if (present != NULL) {
        *present = 1;
    }
    return 0;
}

/* The slot of an object field, or NULL for the others. */
static PyObject **
object_slot(ItemObject *self, Py_ssize_t index)
{
    switch (index) {
    case I_METHOD: return &self->method;
    case I_ROUTE: return &self->route;
    case I_PATH: return &self->path;
    case I_STATUS: return &self->status;
    case I_CLIENT: return &self->client;
    case I_FORWARDED: return &self->forwarded;
    case I_ERROR: return &self->error;
    case I_TRACE: return &self->trace;
    }
    return NULL;
}

/* Store `value` in an object field (index from object_slot's set), putting an
 * untracked item back in the collector's lists if `value` is not an atom. */
void
aegis_item_set(ItemObject *item, Py_ssize_t index, PyObject *value)
{
    if (!PyObject_GC_IsTracked((PyObject *)item) && !is_atomic_field(index, value)) {
        PyObject_GC_Track(item);  /* it may now be part of a cycle */
    }
    PyObject **slot = object_slot(item, index);
    Py_XSETREF(*slot, Py_NewRef(value));
}

static int
item_setitem(PyObject *op, Py_ssize_t index, PyObject *value)
{
    ItemObject *self = (ItemObject *)op;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "inbox item fields cannot be deleted");
        return -1;
    }
    switch (index) {
    case I_START: return set_time(&self->start, NULL, value);
    case I_TTFB: return set_time(&self->ttfb, &self->has_ttfb, value);
    case I_END: return set_time(&self->end, &self->has_end, value);
    case I_REQUEST_BYTES:
    case I_RESPONSE_BYTES: return aegis_item_set_bytes(self, index, value);
    case I_DISCONNECTED: {
        int truth = PyObject_IsTrue(value);
        if (truth < 0) {
            return -1;
        }
        self->disconnected = (char)truth;
        return 0;
    }
    }
    if (object_slot(self, index) == NULL) {
        PyErr_SetString(PyExc_IndexError, "inbox item assignment index out of range");
        return -1;
    }
    aegis_item_set(self, index, value);
    return 0;
}

static PyObject *
item_repr(PyObject *self)
{
    PyObject *fields = PySequence_List(self);
    if (fields == NULL) {
        return NULL;
    }
    PyObject *text = PyUnicode_FromFormat("HttpItem(%R)", fields);
    Py_DECREF(fields);
    return text;
}

static PySequenceMethods item_as_sequence = {
    .sq_length = item_length,
    .sq_item = item_getitem,
    .sq_ass_item = item_setitem,
};

/* item_from_fields(fields): an item holding the 14 fields of a list item, each
 * set as the request path sets it (for tests and benchmarks of what reads
 * items). */
PyObject *
aegis_item_from_fields(PyObject *module, PyObject *fields)
{
    PyObject *sequence = PySequence_Fast(fields, "item_from_fields takes a sequence");
    if (sequence == NULL) {
        return NULL;
    }
    if (PySequence_Fast_GET_SIZE(sequence) != I_FIELDS) {
        Py_DECREF(sequence);
        PyErr_SetString(PyExc_ValueError, "item_from_fields takes 14 fields");
        return NULL;
    }
    PyObject **values = PySequence_Fast_ITEMS(sequence);
    ItemObject *item = aegis_new_item(values[I_METHOD], values[I_PATH], values[I_CLIENT]);
    for (Py_ssize_t index = 0; item != NULL && index < I_FIELDS; index++) {
        if (item_setitem((PyObject *)item, index, values[index]) < 0) {
            Py_CLEAR(item);
        }
    }
    Py_DECREF(sequence);
    if (item != NULL) {
        aegis_untrack_if_atomic(item);
    }
    return (PyObject *)item;
}

PyTypeObject AegisItemType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.HttpItem",
    .tp_doc = "A request's inbox item (layout in aegis_mw.core.items), indexable like a list.",
    .tp_basicsize = sizeof(ItemObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)item_dealloc,
    .tp_traverse = (traverseproc)item_traverse,
    .tp_clear = (inquiry)item_clear,
    .tp_repr = item_repr,
    .tp_as_sequence = &item_as_sequence,
};
