/* FoldPending: the compiled fold's sums not yet written into the realtime
 * ring, the per-label series and the request counts (aggregates.py).
 *
 * Adding one request to those Python lists made a new int or float object
 * for every counter it touched, about fifteen of them, and most of the
 * fold's cost. The compiled fold (fold.c) adds into C numbers here instead,
 * one set per list it touches, and `settle()` writes them into the lists as
 * new objects, once per list position, before anyone reads them or the
 * Python fold takes over (RealtimeAggregates settles under its lock).
 *
 * The results are the Python fold's exactly: an int position gets the sum of
 * its deltas (integer addition in any order is the same), a float position
 * starts from the value the list held and gets the same additions in the
 * same order (each list has one accumulator, and items are folded in their
 * order), a minimum or maximum the same comparisons.
 *
 * `settle()` makes every new object before it changes anything: when out of
 * memory it raises and keeps what is pending, so nothing is lost or counted
 * twice. Dropping the object (RealtimeAggregates.reset) drops the pending
 * sums with it.
 *
 * It holds lists and tuples only, none of which can hold it: no cycles, so it
 * is not tracked by the collector. */
#include "hotpath.h"

static PendingList *
new_list(FoldPendingObject *pending, PyObject *list, Py_ssize_t length)
{
    if (pending->list_count >= PENDING_LISTS) {
        return NULL;
    }
    /* ints, floats and touched (8 bytes a position each), then kind. */
    char *block = PyMem_Malloc((size_t)length * 25);
    if (block == NULL) {
        return NULL;
    }
    PendingList *entry = &pending->lists[pending->list_count++];
    entry->list = Py_NewRef(list);
    entry->length = length;
    entry->ints = (long long *)block;
    entry->floats = (double *)(block + (size_t)length * 8);
    entry->touched = (Py_ssize_t *)(block + (size_t)length * 16);
    entry->kind = (unsigned char *)(block + (size_t)length * 24);
    entry->touched_count = 0;
    memset(entry->kind, PENDING_NONE, (size_t)length);
    return entry;
}

static inline size_t
slot_of(const void *pointer)
{
    uint64_t value = (uint64_t)(uintptr_t)pointer >> 4;
    return (size_t)((value * 0x9E3779B97F4A7C15ull) >> (64 - PENDING_TABLE_BITS));
}

/* The pending sums of `list` (a list of `length`), made when new; NULL when
 * full or out of memory (no error set: the caller leaves the item to the
 * Python fold, which settles first). */
PendingList *
aegis_pending_list(FoldPendingObject *pending, PyObject *list, Py_ssize_t length)
{
    size_t slot = slot_of(list);
    for (;;) {
        int held = pending->list_table[slot];
        if (held == 0) {
            break;
        }
        PendingList *entry = &pending->lists[held - 1];
        if (entry->list == list) {
            return entry->length == length ? entry : NULL;
        }
        slot = (slot + 1) & (PENDING_TABLE - 1);
    }
    PendingList *entry = new_list(pending, list, length);
    if (entry != NULL) {
        pending->list_table[slot] = (short)pending->list_count;
    }
    return entry;
}

/* The pending count of the request counts' key `key` (which they must hold,
 * as an int), made when new; NULL as above. */
long long *
aegis_pending_count(FoldPendingObject *pending, PyObject *key)
{
    size_t slot = slot_of(key);
    for (;;) {
        int held = pending->count_table[slot];
        if (held == 0) {
            break;
        }
        PendingCount *entry = &pending->counts[held - 1];
        if (entry->key == key) {
            return &entry->delta;
        }
        slot = (slot + 1) & (PENDING_TABLE - 1);
    }
    if (pending->count_count >= PENDING_COUNTS) {
        return NULL;
    }
    PyObject *count = PyDict_GetItemWithError(pending->requests, key); /* borrowed */
    if (count == NULL || !PyLong_CheckExact(count)) {
        PyErr_Clear();
        return NULL;
    }
    PendingCount *entry = &pending->counts[pending->count_count++];
    entry->key = Py_NewRef(key);
    entry->delta = 0;
    pending->count_table[slot] = (short)pending->count_count;
    return &entry->delta;
}

/* held + delta as Python adds them: a new int. */
static PyObject *
int_sum(PyObject *held, long long delta)
{
    PyObject *sum = aegis_int_plus(held, delta);
    if (sum != NULL || PyErr_Occurred()) {
        return sum;
    }
    /* Past 64 bits, or not a plain int any more: Python's own addition. */
    PyObject *addend = PyLong_FromLongLong(delta);
    sum = addend != NULL ? PyNumber_Add(held, addend) : NULL;
    Py_XDECREF(addend);
    return sum;
}

static void
forget(FoldPendingObject *pending)
{
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        Py_CLEAR(pending->lists[index].list);
        PyMem_Free(pending->lists[index].ints);  /* the block's start */
    }
    for (Py_ssize_t index = 0; index < pending->count_count; index++) {
        Py_CLEAR(pending->counts[index].key);
    }
    pending->list_count = pending->count_count = 0;
    pending->items = 0;
    memset(pending->list_table, 0, sizeof pending->list_table);
    memset(pending->count_table, 0, sizeof pending->count_table);
}

/* Write every pending sum; 0, or -1 with an error and nothing changed. */
int
aegis_pending_settle(FoldPendingObject *pending)
{
    if (pending->list_count == 0 && pending->count_count == 0) {
        return 0;
    }
    Py_ssize_t total = pending->count_count;
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        PendingList *entry = &pending->lists[index];
        if (!PyList_CheckExact(entry->list) || PyList_GET_SIZE(entry->list) != entry->length) {
            PyErr_SetString(PyExc_RuntimeError,
                            "a list the fold has sums pending for changed its length");
            return -1;
        }
        total += entry->touched_count;
    }
    PyObject **made = PyMem_Calloc((size_t)(total ? total : 1), sizeof *made);
    if (made == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t next = 0;
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        PendingList *entry = &pending->lists[index];
        for (Py_ssize_t touch = 0; touch < entry->touched_count; touch++) {
            Py_ssize_t position = entry->touched[touch];
            made[next] = entry->kind[position] == PENDING_INT
                             ? int_sum(PyList_GET_ITEM(entry->list, position),
                                       entry->ints[position])
                             : PyFloat_FromDouble(entry->floats[position]);
            if (made[next++] == NULL) {
                goto failed;
            }
        }
    }
    for (Py_ssize_t index = 0; index < pending->count_count; index++) {
        PendingCount *entry = &pending->counts[index];
        PyObject *held = PyDict_GetItemWithError(pending->requests, entry->key); /* borrowed */
        if (held == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError,
                                "a request count the fold has a sum pending for is gone");
            }
            goto failed;
        }
        made[next] = int_sum(held, entry->delta);
        if (made[next++] == NULL) {
            goto failed;
        }
    }
    /* Everything made: now change. Replacing a list item or the value of a
     * key the dict holds allocates nothing, so cannot fail; the values
     * replaced are ints and floats, whose release runs no code. */
    next = 0;
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        PendingList *entry = &pending->lists[index];
        for (Py_ssize_t touch = 0; touch < entry->touched_count; touch++) {
            PyList_SetItem(entry->list, entry->touched[touch], made[next++]);
        }
    }
    for (Py_ssize_t index = 0; index < pending->count_count; index++) {
        PyObject *value = made[next++];
        int set = PyDict_SetItem(pending->requests, pending->counts[index].key, value);
        Py_DECREF(value);
        if (set < 0) {
            PyErr_Clear();  /* not reached: the key is there */
        }
    }
    PyMem_Free(made);
    forget(pending);
    return 0;
failed:
    for (Py_ssize_t index = 0; index < next; index++) {
        Py_XDECREF(made[index]);
    }
    PyMem_Free(made);
    return -1;
}

static PyObject *
pending_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *ring, *requests;
    static char *names[] = {"ring", "requests", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O!:FoldPending", names, &PyList_Type,
                                     &ring, &PyDict_Type, &requests)) {
        return NULL;
    }
    if (!PyList_CheckExact(ring) || !PyDict_CheckExact(requests)) {
        PyErr_SetString(PyExc_TypeError, "FoldPending: a list and a dict");
        return NULL;
    }
    FoldPendingObject *pending = (FoldPendingObject *)type->tp_alloc(type, 0);
    if (pending == NULL) {
        return NULL;
    }
    pending->ring = Py_NewRef(ring);
    pending->requests = Py_NewRef(requests);
    return (PyObject *)pending;
}

static void
pending_dealloc(FoldPendingObject *pending)
{
    forget(pending);
    Py_CLEAR(pending->ring);
    Py_CLEAR(pending->requests);
    Py_TYPE(pending)->tp_free((PyObject *)pending);
}

static PyObject *
pending_settle(FoldPendingObject *pending, PyObject *unused)
{
    if (aegis_pending_settle(pending) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
pending_sizes(FoldPendingObject *pending, PyObject *unused)
{
    return Py_BuildValue("(nnL)", pending->list_count, pending->count_count, pending->items);
}

static PyMethodDef pending_methods[] = {
    {"settle", (PyCFunction)pending_settle, METH_NOARGS,
     "Write the pending sums into the lists and counts (nothing changed when it raises)."},
    {"sizes", (PyCFunction)pending_sizes, METH_NOARGS,
     "(lists, counts, items) with sums pending (tests)."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject AegisFoldPendingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.FoldPending",
    .tp_basicsize = sizeof(FoldPendingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FoldPending(ring, requests): the compiled fold's sums not yet in the lists.",
    .tp_new = pending_new,
    .tp_dealloc = (destructor)pending_dealloc,
    .tp_methods = pending_methods,
};
