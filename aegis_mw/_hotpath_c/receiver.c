/* Receiver: the app's `receive`. Calling it returns a native coroutine of a
 * Python function (observers.observe_receive), so `receive()` stays a real
 * coroutine for every framework that checks; it only runs when the app reads
 * the body or waits for a disconnect. */
#include "hotpath.h"

PyObject *
aegis_receiver_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    ReceiverObject *self = (ReceiverObject *)op;
    if (self->path == NULL || self->item == NULL) {  /* emptied by the collector */
        PyErr_SetString(PyExc_RuntimeError, "aegis_mw request already collected");
        return NULL;
    }
    PyObject *observe = self->path->observe_receive;
    if (PyVectorcall_NARGS(nargsf) == 0 && kwnames == NULL) {
        PyObject *call_args[2] = {(PyObject *)self->item, self->receive};
        return PyObject_Vectorcall(observe, call_args, 2, NULL);
    }
    /* Not a plain receive(): the Python path's partial(observe_receive, item,
     * receive) answers it, with its own TypeError. */
    PyObject *bound = PyObject_CallFunctionObjArgs(
        aegis_partial, observe, (PyObject *)self->item, self->receive, NULL);
    if (bound == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_Vectorcall(bound, args, nargsf, kwnames);
    Py_DECREF(bound);
    return result;
}

static int
receiver_traverse(ReceiverObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->path);
    Py_VISIT(self->item);
    Py_VISIT(self->receive);
    return 0;
}

static int
receiver_clear(ReceiverObject *self)
{
    Py_CLEAR(self->path);
    Py_CLEAR(self->item);
    Py_CLEAR(self->receive);
    return 0;
}

static void
receiver_dealloc(ReceiverObject *self)
{
    PyObject_GC_UnTrack(self);
    receiver_clear(self);
    PyObject_GC_Del(self);
}

PyTypeObject AegisReceiverType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.Receiver",
    .tp_doc = "The app's receive: counts request body bytes and notes a disconnect.",
    .tp_basicsize = sizeof(ReceiverObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(ReceiverObject, vectorcall),
    .tp_call = PyVectorcall_Call,
    .tp_dealloc = (destructor)receiver_dealloc,
    .tp_traverse = (traverseproc)receiver_traverse,
    .tp_clear = (inquiry)receiver_clear,
};
