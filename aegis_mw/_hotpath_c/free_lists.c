/* Free lists for the two objects each request leaves behind for a while: its
 * HttpItem (from the request path until the flusher drains the inbox) and its
 * RequestRecord (from the flusher's finalize until the sink has written it).
 *
 * Why: CPython starts a young-generation collection each time allocations of
 * garbage-collected objects exceed deallocations by 700 (gc threshold 0).
 * A bare ASGI app frees what a request allocates before the next requests
 * come, so its count hovers and it almost never collects. Our items and
 * records live on for milliseconds to a second, so at 29,000 requests/s the
 * count crossed the threshold about 45 times a second: measured in a uvicorn
 * server under wrk, 266 to 273 young collections in 6 s, and, because each
 * promotes the app's objects that happen to be alive at that moment, two full
 * collections of 13.7 to 15.7 ms that became the server's p99.9. Taken from and
 * returned to these lists, items and records are neither counted as
 * allocations nor as deallocations (as CPython's own tuple free list works),
 * and the same load runs with the bare app's 1-3 collections.
 *
 * Both lists are bounded, above what the default pipeline keeps alive at
 * once (an inbox of up to batch_size = 5,000 items before the flusher wakes;
 * a batch of records being finalized while the sink writes the one before):
 * with smaller lists, a paced load at 15,000 requests/s still started twice
 * the bare app's collections. What they hold is memory the process keeps
 * after its busiest moment: at most about 1.3 MB of items (160 bytes each)
 * and 2.6 MB of records (160 bytes each). Every use is
 * under the GIL: the request path, the flusher and the sink thread all hold
 * it when they create or free these objects. A build without the GIL
 * (Py_GIL_DISABLED) keeps no lists.
 *
 * Records are instances of aegis_mw.core.record.RequestRecord, a Python
 * class (a NamedTuple): what frees one is tuple's dealloc, which hands the
 * memory to the type's tp_free. `reuse_records(RequestRecord)` sets that slot
 * to record_free once, so that instances of exactly that type and size are
 * kept; anything else (a subclass, another size, a full list) is freed as
 * before with PyObject_GC_Del. One type only: another interpreter's
 * RequestRecord is left as it is. A kept record's fields were already released
 * and its type reference dropped by the dealloc, as for any freed object. */
#include "hotpath.h"

/* Under AddressSanitizer a kept object's memory is marked unusable until it
 * is handed out again, so a use after free of an item or a record (which the
 * lists would otherwise hide by recycling the memory) still stops the test. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define AEGIS_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define AEGIS_ASAN 1
#endif
#ifdef AEGIS_ASAN
#include <sanitizer/asan_interface.h>
#define HIDE(object, size) ASAN_POISON_MEMORY_REGION((object), (size))
#define SHOW(object, size) ASAN_UNPOISON_MEMORY_REGION((object), (size))
#else
#define HIDE(object, size) ((void)0)
#define SHOW(object, size) ((void)0)
#endif
#define RECORD_SIZE_BYTES (PyTuple_Type.tp_basicsize + RECORD_FIELDS * sizeof(PyObject *))

#define ITEM_FREE_LIMIT 8192
#define RECORD_FREE_LIMIT 16384

#ifndef Py_GIL_DISABLED
static ItemObject *free_items[ITEM_FREE_LIMIT];
static Py_ssize_t free_item_count;
static PyObject *free_records[RECORD_FREE_LIMIT];
static Py_ssize_t free_record_count;
#endif
/* The type whose tp_free is record_free (a strong reference, never dropped:
 * a kept record's memory is reused only as an instance of this type). */
static PyTypeObject *record_type;

ItemObject *
aegis_reused_item(void)
{
#ifndef Py_GIL_DISABLED
    if (free_item_count > 0) {
        ItemObject *item = free_items[--free_item_count];
        SHOW(item, sizeof(ItemObject));
        _Py_NewReference((PyObject *)item);
        return item;
    }
#endif
    return NULL;
}

int
aegis_keep_item(ItemObject *item)
{
#ifndef Py_GIL_DISABLED
    if (free_item_count < ITEM_FREE_LIMIT) {
        free_items[free_item_count++] = item;
        HIDE(item, sizeof(ItemObject));
        return 1;
    }
#endif
    return 0;
}

static void
record_free(void *memory)
{
#ifndef Py_GIL_DISABLED
    PyObject *record = (PyObject *)memory;
    if (Py_TYPE(record) == record_type && Py_SIZE(record) == RECORD_FIELDS
        && free_record_count < RECORD_FREE_LIMIT) {
        free_records[free_record_count++] = record;
        HIDE(record, RECORD_SIZE_BYTES);
        return;
    }
#endif
    PyObject_GC_Del(memory);
}

PyObject *
aegis_reused_record(PyTypeObject *type)
{
#ifndef Py_GIL_DISABLED
    if (type == record_type && free_record_count > 0) {
        PyObject *record = free_records[--free_record_count];
        SHOW(record, RECORD_SIZE_BYTES);
        Py_INCREF(type);  /* what PyType_GenericAlloc takes for a heap type's instance */
        _Py_NewReference(record);
        return record;
    }
#endif
    return NULL;
}

/* reuse_records(type) -> bool: free the instances of this type (RequestRecord)
 * into the record list from now on; False, and nothing changed, when another
 * type already has the list (a second interpreter's or a reloaded module's
 * RequestRecord: its records are allocated and freed as usual). */
PyObject *
aegis_reuse_records(PyObject *module, PyObject *type)
{
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "reuse_records() takes a type");
        return NULL;
    }
    PyTypeObject *tuple_type = (PyTypeObject *)type;
    if (tuple_type == record_type) {
        Py_RETURN_TRUE;
    }
    if (!PyType_IsSubtype(tuple_type, &PyTuple_Type)
        || !(tuple_type->tp_flags & Py_TPFLAGS_HEAPTYPE)
        || tuple_type->tp_basicsize != PyTuple_Type.tp_basicsize
        || tuple_type->tp_itemsize != PyTuple_Type.tp_itemsize
        || tuple_type->tp_free != PyObject_GC_Del) {
        PyErr_SetString(PyExc_TypeError,
                        "reuse_records() takes a tuple subclass defined in Python "
                        "with no fields of its own");
        return NULL;
    }
    if (record_type != NULL) {
        Py_RETURN_FALSE;
    }
    record_type = (PyTypeObject *)Py_NewRef(type);
    tuple_type->tp_free = record_free;
    Py_RETURN_TRUE;
}

/* At the module's initialisation: lists left by an earlier runtime of the
 * same process (an embedder's Py_Finalize then Py_Initialize) are forgotten,
 * not reused (their memory belonged to that runtime), and no record type is
 * reused until the new runtime's RequestRecord asks. */
void
aegis_free_lists_init(void)
{
#ifndef Py_GIL_DISABLED
    free_item_count = 0;
    free_record_count = 0;
#endif
    record_type = NULL;
}

/* clear_free_lists(): free what the lists hold (tests; memory back). */
PyObject *
aegis_clear_free_lists(PyObject *module, PyObject *unused)
{
#ifndef Py_GIL_DISABLED
    while (free_item_count > 0) {
        ItemObject *item = free_items[--free_item_count];
        SHOW(item, sizeof(ItemObject));
        PyObject_GC_Del(item);
    }
    while (free_record_count > 0) {
        PyObject *record = free_records[--free_record_count];
        SHOW(record, RECORD_SIZE_BYTES);
        PyObject_GC_Del(record);
    }
#endif
    Py_RETURN_NONE;
}

/* free_list_sizes() -> (items kept, item limit, records kept, record limit) */
PyObject *
aegis_free_list_sizes(PyObject *module, PyObject *unused)
{
#ifndef Py_GIL_DISABLED
    return Py_BuildValue("nini", free_item_count, ITEM_FREE_LIMIT, free_record_count,
                         RECORD_FREE_LIMIT);
#else
    return Py_BuildValue("iiii", 0, 0, 0, 0);
#endif
}
