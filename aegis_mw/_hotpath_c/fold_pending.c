/* FoldPending: the compiled loops' sums not yet written into the Python
 * lists they stand for: the fold's (fold.c) realtime ring slots, per-label
 * series and request counts (aggregates.py), and finalize's (finalize.c)
 * rollup cells with their histograms (rollup.py).
 *
 * Adding one request to those lists made a new int or float object for
 * every counter it touched, about fifteen in the fold and eight in the
 * rollups, most of those loops' cost. They add into C numbers here instead,
 * one set per list they touch, and `settle()` writes them into the lists as
 * new objects, once per position, before anyone reads them or the Python
 * code takes over (RealtimeAggregates settles under its lock, the Finalizer
 * before it hands its rollups over).
 *
 * The results are the Python code's exactly: an int position gets the sum
 * of its deltas (integer addition in any order is the same), a float
 * position starts from the value the list held and gets the same additions
 * in the same order (each list has one set of sums, and items are taken in
 * their order), a minimum or maximum the same comparisons.
 *
 * `settle()` makes every new object before it changes anything, and undoes
 * the histogram entries it added if one cannot be added: when out of memory
 * it raises MemoryError and keeps what is pending, so nothing is lost or
 * counted twice. Sums for a list that changed shape under them (nothing in
 * the package does that) cannot be written: it drops them all and raises
 * RuntimeError, which the owner logs (core/pending_sums.py).
 * Dropping the object drops the pending sums with it (a reset, a fork).
 *
 * It holds lists, dicts, tuples and strs only, none of which can hold it: no
 * cycles, so it is not tracked by the collector. */
#include "hotpath.h"

static PendingList *
new_list(FoldPendingObject *pending, PyObject *list, Py_ssize_t list_length, PyObject *dict,
         Py_ssize_t dict_base, Py_ssize_t length)
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
    entry->list_length = list_length;
    entry->dict = Py_XNewRef(dict);
    entry->dict_base = dict_base;
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

/* The pending sums of `list`, made when new (as `make` says); NULL when
 * full, out of memory or of another shape (no error set: the caller leaves
 * the item to the Python code, which settles first). */
static PendingList *
find_list(FoldPendingObject *pending, PyObject *list, Py_ssize_t list_length, PyObject *dict,
          Py_ssize_t dict_base, Py_ssize_t length)
{
    size_t slot = slot_of(list);
    for (;;) {
        int held = pending->list_table[slot];
        if (held == 0) {
            break;
        }
        PendingList *entry = &pending->lists[held - 1];
        if (entry->list == list) {
            return entry->length == length && entry->dict == dict ? entry : NULL;
        }
        slot = (slot + 1) & (PENDING_TABLE - 1);
    }
    PendingList *entry = new_list(pending, list, list_length, dict, dict_base, length);
    if (entry != NULL) {
        pending->list_table[slot] = (short)pending->list_count;
    }
    return entry;
}

/* The pending sums of a list of `length` (the fold's). */
PendingList *
aegis_pending_list(FoldPendingObject *pending, PyObject *list, Py_ssize_t length)
{
    return find_list(pending, list, length, NULL, length, length);
}

/* The pending sums of a rollup cell: `fields` list items, the last a dict
 * of `buckets` possible keys (0, 1, ...) counted as positions after them. */
PendingList *
aegis_pending_cell(FoldPendingObject *pending, PyObject *cell, Py_ssize_t fields,
                   Py_ssize_t buckets)
{
    if (!PyList_CheckExact(cell) || PyList_GET_SIZE(cell) != fields) {
        return NULL;
    }
    PyObject *dict = PyList_GET_ITEM(cell, fields - 1);
    if (!PyDict_CheckExact(dict)) {
        return NULL;
    }
    return find_list(pending, cell, fields, dict, fields, fields + buckets);
}

/* The pending count of the request counts' key `key` (which they must hold,
 * as an int), made when new; NULL as above. Keys are told apart by identity:
 * two equal key tuples would each settle from the same count, one sum lost.
 * They cannot be two: LabeledTotals makes one key tuple per known label set,
 * and a label set's values (method, route, status text) differ from every
 * other's. */
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
    if (pending->count_count >= PENDING_COUNTS || pending->requests == NULL) {
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

static inline size_t
key_slot(long long bucket, PyObject *route, PyObject *method, long klass)
{
    uint64_t value = (uint64_t)bucket * 0x9E3779B97F4A7C15ull;
    value ^= (uint64_t)(uintptr_t)route * 0xC2B2AE3D27D4EB4Full;
    value ^= (uint64_t)(uintptr_t)method * 0x165667B19E3779F9ull;
    value += (uint64_t)klass;
    value *= 0x9E3779B97F4A7C15ull;
    return (size_t)(value >> (64 - PENDING_TABLE_BITS));
}

/* The pending sums remembered for a rollup key (the route and method by
 * identity), or NULL. */
PendingList *
aegis_pending_key(FoldPendingObject *pending, long long bucket, PyObject *route,
                  PyObject *method, long klass)
{
    size_t slot = key_slot(bucket, route, method, klass);
    for (;;) {
        int held = pending->key_table[slot];
        if (held == 0) {
            return NULL;
        }
        PendingKey *entry = &pending->keys[held - 1];
        if (entry->bucket == bucket && entry->route == route && entry->method == method
            && entry->klass == klass) {
            return entry->sums;
        }
        slot = (slot + 1) & (PENDING_TABLE - 1);
    }
}

/* Remember `sums` for a rollup key not remembered yet (nothing when full). */
void
aegis_pending_remember(FoldPendingObject *pending, long long bucket, PyObject *route,
                       PyObject *method, long klass, PendingList *sums)
{
    if (pending->key_count >= PENDING_LISTS) {
        return;
    }
    size_t slot = key_slot(bucket, route, method, klass);
    while (pending->key_table[slot] != 0) {
        slot = (slot + 1) & (PENDING_TABLE - 1);
    }
    pending->keys[pending->key_count++] = (PendingKey){
        .bucket = bucket, .route = Py_NewRef(route), .method = Py_NewRef(method),
        .klass = klass, .sums = sums,
    };
    pending->key_table[slot] = (short)pending->key_count;
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

/* Forget the remembered keys (their sums stay). */
static void
forget_keys(FoldPendingObject *pending)
{
    for (Py_ssize_t index = 0; index < pending->key_count; index++) {
        Py_CLEAR(pending->keys[index].route);
        Py_CLEAR(pending->keys[index].method);
    }
    pending->key_count = 0;
    memset(pending->key_table, 0, sizeof pending->key_table);
    Py_CLEAR(pending->cells);
}

/* The rollup cells dict the keys remembered from now on are found in: when
 * it is another than theirs (the rollups were taken or replaced and the
 * settle that forgets the keys then ran out of memory), the keys are
 * forgotten, so none leads to a cell of another dict. */
void
aegis_pending_cells(FoldPendingObject *pending, PyObject *cells)
{
    if (pending->cells != cells) {
        forget_keys(pending);
        pending->cells = Py_NewRef(cells);
    }
}

static void
forget(FoldPendingObject *pending)
{
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        Py_CLEAR(pending->lists[index].list);
        Py_CLEAR(pending->lists[index].dict);
        PyMem_Free(pending->lists[index].ints);  /* the block's start */
    }
    for (Py_ssize_t index = 0; index < pending->count_count; index++) {
        Py_CLEAR(pending->counts[index].key);
    }
    forget_keys(pending);
    pending->list_count = pending->count_count = 0;
    pending->items = 0;
    memset(pending->list_table, 0, sizeof pending->list_table);
    memset(pending->count_table, 0, sizeof pending->count_table);
}

/* One value settle writes: into a list, or a dict's key (with the value it
 * replaces, or NULL where it adds the key, to undo it), or the request
 * counts' key. */
typedef struct {
    PyObject *value, *key, *old;
    PyObject *dict;  /* borrowed: the pending sums hold it */
} Made;

static void
release(Made *made, Py_ssize_t count)
{
    for (Py_ssize_t index = 0; index < count; index++) {
        Py_XDECREF(made[index].value);
        Py_XDECREF(made[index].key);
        Py_XDECREF(made[index].old);
    }
    PyMem_Free(made);
}

/* The new value of one pending position, its key and the value it replaces
 * filled in for a dict position; -1 with an error. */
static int
make_value(PendingList *entry, Py_ssize_t position, Made *out)
{
    if (entry->kind[position] == PENDING_FLOAT) {
        out->value = PyFloat_FromDouble(entry->floats[position]);
        return out->value != NULL ? 0 : -1;
    }
    long long delta = entry->ints[position];
    if (position < entry->dict_base) {
        out->value = int_sum(PyList_GET_ITEM(entry->list, position), delta);
        return out->value != NULL ? 0 : -1;
    }
    out->dict = entry->dict;
    out->key = PyLong_FromSsize_t(position - entry->dict_base);
    if (out->key == NULL) {
        return -1;
    }
    PyObject *held = PyDict_GetItemWithError(entry->dict, out->key); /* borrowed */
    if (held == NULL && PyErr_Occurred()) {
        return -1;
    }
    out->old = Py_XNewRef(held);
    out->value = held != NULL ? int_sum(held, delta) : PyLong_FromLongLong(delta);
    return out->value != NULL ? 0 : -1;
}

/* Write every pending sum; 0, or -1 with an error and nothing changed. */
int
aegis_pending_settle(FoldPendingObject *pending)
{
    if (pending->list_count == 0 && pending->count_count == 0) {
        return 0;  /* nothing pending (a key is remembered only with its sums) */
    }
    Py_ssize_t total = pending->count_count;
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        PendingList *entry = &pending->lists[index];
        if (!PyList_CheckExact(entry->list) || PyList_GET_SIZE(entry->list) != entry->list_length
            || (entry->dict != NULL
                && PyList_GET_ITEM(entry->list, entry->dict_base - 1) != entry->dict)) {
            forget(pending);  /* they cannot be written: dropped, not kept to fail again */
            PyErr_SetString(PyExc_RuntimeError,
                            "a list with sums pending changed its length or its histogram: "
                            "its sums and the others were dropped");
            return -1;
        }
        total += entry->touched_count;
    }
    Made *made = PyMem_Calloc((size_t)(total ? total : 1), sizeof *made);
    if (made == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t next = 0;
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        PendingList *entry = &pending->lists[index];
        for (Py_ssize_t touch = 0; touch < entry->touched_count; touch++) {
            if (make_value(entry, entry->touched[touch], &made[next++]) < 0) {
                release(made, next);
                return -1;
            }
        }
    }
    for (Py_ssize_t index = 0; index < pending->count_count; index++) {
        PendingCount *entry = &pending->counts[index];
        PyObject *held = PyDict_GetItemWithError(pending->requests, entry->key); /* borrowed */
        if (held == NULL) {
            release(made, next);
            if (!PyErr_Occurred()) {
                forget(pending);  /* as above */
                PyErr_SetString(PyExc_RuntimeError,
                                "a request count with a sum pending is gone: the sums were "
                                "dropped");
            }
            return -1;
        }
        made[next].value = int_sum(held, entry->delta);
        if (made[next++].value == NULL) {
            release(made, next);
            return -1;
        }
    }
    /* Everything made. The dict keys first: adding a key can fail (the dict
     * grows), and those added are then taken out again and the values
     * replaced put back, which cannot fail. */
    next = 0;
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        PendingList *entry = &pending->lists[index];
        for (Py_ssize_t touch = 0; touch < entry->touched_count; touch++, next++) {
            if (made[next].key == NULL
                || PyDict_SetItem(entry->dict, made[next].key, made[next].value) == 0) {
                continue;
            }
            for (Py_ssize_t back = 0; back < next; back++) {
                if (made[back].key == NULL) {
                    continue;
                }
                if (made[back].old != NULL) {
                    PyDict_SetItem(made[back].dict, made[back].key, made[back].old);
                }
                else {
                    PyDict_DelItem(made[back].dict, made[back].key);
                }
            }
            release(made, total);
            return -1;
        }
    }
    /* Then the list items and the counts: replacing a list item or the value
     * of a key the dict holds allocates nothing, so cannot fail; the values
     * replaced are ints and floats, whose release runs no code. */
    next = 0;
    for (Py_ssize_t index = 0; index < pending->list_count; index++) {
        PendingList *entry = &pending->lists[index];
        for (Py_ssize_t touch = 0; touch < entry->touched_count; touch++, next++) {
            if (made[next].key == NULL) {
                PyList_SetItem(entry->list, entry->touched[touch], made[next].value);
                made[next].value = NULL;  /* stolen */
            }
        }
    }
    for (Py_ssize_t index = 0; index < pending->count_count; index++, next++) {
        if (PyDict_SetItem(pending->requests, pending->counts[index].key, made[next].value) < 0) {
            PyErr_Clear();  /* not reached: the key is there */
        }
    }
    release(made, total);
    forget(pending);
    return 0;
}

static PyObject *
pending_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *ring = NULL, *requests = NULL;
    static char *names[] = {"ring", "requests", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O!O!:FoldPending", names, &PyList_Type,
                                     &ring, &PyDict_Type, &requests)) {
        return NULL;
    }
    if ((ring == NULL) != (requests == NULL)
        || (ring != NULL && (!PyList_CheckExact(ring) || !PyDict_CheckExact(requests)))) {
        PyErr_SetString(PyExc_TypeError,
                         "FoldPending: a list and a dict (the fold's), or nothing (rollups)");
        return NULL;
    }
    FoldPendingObject *pending = (FoldPendingObject *)type->tp_alloc(type, 0);
    if (pending == NULL) {
        return NULL;
    }
    pending->ring = Py_XNewRef(ring);
    pending->requests = Py_XNewRef(requests);
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
    .tp_doc = "FoldPending(ring, requests) for the fold, FoldPending() for the rollups: "
              "the compiled loops' sums not yet in the lists.",
    .tp_new = pending_new,
    .tp_dealloc = (destructor)pending_dealloc,
    .tp_methods = pending_methods,
};
