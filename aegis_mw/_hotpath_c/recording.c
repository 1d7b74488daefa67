/* What the ASGI and the WSGI path share: their owner and clock, the recorder's
 * inbox (Recorder.offer, inlined), the excluded paths, and how a failure of
 * ours is counted. */
#include "hotpath.h"

int
aegis_recording_init(AegisRecording *rec, PyObject *owner, PyObject *clock, int native_clock,
                     PyObject *recorder)
{
#if !AEGIS_NATIVE_MONOTONIC
    if (native_clock) {
        PyErr_SetString(PyExc_ValueError, "no native monotonic clock on this platform");
        return -1;
    }
#endif
    PyObject *bounds = PyObject_GetAttrString(recorder, "bounds");
    if (bounds == NULL) {
        return -1;
    }
    if (!PyList_CheckExact(bounds) || PyList_GET_SIZE(bounds) != 2) {
        Py_DECREF(bounds);
        PyErr_SetString(PyExc_TypeError, "recorder.bounds must be a list [limit, wake_at]");
        return -1;
    }
    PyObject *inbox = PyObject_GetAttrString(recorder, "inbox");
    PyObject *append = inbox != NULL ? PyObject_GetAttrString(inbox, "append") : NULL;
    if (append == NULL) {
        Py_DECREF(bounds);
        Py_XDECREF(inbox);
        return -1;
    }
    Py_XSETREF(rec->bounds, bounds);
    Py_XSETREF(rec->inbox, inbox);
    Py_XSETREF(rec->append, append);
    Py_XSETREF(rec->owner, Py_NewRef(owner));
    Py_XSETREF(rec->clock, Py_NewRef(clock));
    Py_XSETREF(rec->recorder, Py_NewRef(recorder));
    rec->native_clock = native_clock;
    return 0;
}

int
aegis_recording_traverse(AegisRecording *rec, visitproc visit, void *arg)
{
    Py_VISIT(rec->owner);
    Py_VISIT(rec->clock);
    Py_VISIT(rec->recorder);
    Py_VISIT(rec->bounds);
    Py_VISIT(rec->inbox);
    Py_VISIT(rec->append);
    return 0;
}

void
aegis_recording_clear(AegisRecording *rec)
{
    Py_CLEAR(rec->owner);
    Py_CLEAR(rec->clock);
    Py_CLEAR(rec->recorder);
    Py_CLEAR(rec->bounds);
    Py_CLEAR(rec->inbox);
    Py_CLEAR(rec->append);
}

/* A failure of ours while finishing (the exception is set). Like the Python
 * path's `except Exception`, an Exception is counted and the request goes on
 * (returns 0); anything else (KeyboardInterrupt, cancellation) propagates (-1). */
int
aegis_own_failure(AegisRecording *rec)
{
    if (!PyErr_Occurred()) {  /* a failure reported without an exception: a bug, counted */
        PyErr_SetString(PyExc_SystemError, "aegis_mw: a failure without an exception set");
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyErr_Clear();
    PyObject *result = PyObject_CallMethodNoArgs(rec->owner, aegis_str.internal_error);
    if (result != NULL) {
        Py_DECREF(result);
        return 0;
    }
    if (!PyErr_ExceptionMatches(PyExc_Exception)) {
        return -1;
    }
    PyErr_WriteUnraisable(rec->owner);
    return 0;
}

/* A failure of ours (set) while `original` was being handled: an Exception is
 * counted, as the Python paths' `except Exception` does, and `original` is
 * raised again; anything else replaces it, chained. Steals `original`. */
void
aegis_keep_original(AegisRecording *rec, PyObject *original)
{
    if (aegis_own_failure(rec) == 0) {
        restore_exception(original);
        return;
    }
    PyObject *replacement = take_exception();
    PyException_SetContext(replacement, original);
    restore_exception(replacement);
}

static int
shared_size(PyObject *list, Py_ssize_t index, Py_ssize_t *value)
{
    PyObject *number = shared(list, index);
    if (number == NULL) {
        return -1;
    }
    *value = PyLong_AsSsize_t(number);
    return *value == -1 && PyErr_Occurred() ? -1 : 0;
}

/* Put a finished request's item in the inbox (Recorder.offer, inlined). */
int
aegis_queue_item(AegisRecording *rec, ItemObject *item)
{
    Py_ssize_t limit, wake_at;
    if (shared_size(rec->bounds, 0, &limit) < 0 || shared_size(rec->bounds, 1, &wake_at) < 0) {
        return -1;
    }
    Py_ssize_t queued = PyObject_Length(rec->inbox);
    if (queued < 0) {
        return -1;
    }
    PyObject *result;
    if (queued < limit) {
        aegis_untrack_if_atomic(item);
        result = PyObject_CallOneArg(rec->append, (PyObject *)item);
        if (result == NULL) {
            return -1;
        }
        Py_DECREF(result);
        if (queued < wake_at) {
            return 0;
        }
        result = PyObject_CallMethodNoArgs(rec->recorder, aegis_str.wake_flusher);
    }
    else {
        result = PyObject_CallMethodNoArgs(rec->recorder, aegis_str.refuse);
    }
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* 1 when the path is one the middleware leaves alone (PathFilter.current:
 * [literal set, match or None]), 0 if not, -1 on error. */
int
aegis_excluded(PyObject *exclusions, PyObject *request_path)
{
    PyObject *literal = Py_XNewRef(shared(exclusions, 0));
    if (literal == NULL) {
        return -1;
    }
    int found = PySet_Contains(literal, request_path);
    Py_DECREF(literal);
    if (found != 0) {
        return found;
    }
    PyObject *match = Py_XNewRef(shared(exclusions, 1));
    if (match == NULL) {
        return -1;
    }
    if (match == Py_None) {
        Py_DECREF(match);
        return 0;
    }
    PyObject *result = PyObject_CallOneArg(match, request_path);
    Py_DECREF(match);
    if (result == NULL) {
        return -1;
    }
    found = PyObject_IsTrue(result);
    Py_DECREF(result);
    return found;
}

/* __init__ on an object already initialised (`initialised`, its vectorcall,
 * set by a successful __init__): refused, -1 with RuntimeError. Requests in
 * flight rely on what it was built with, borrowed across their calls. */
int
aegis_refuse_init_again(PyObject *self, vectorcallfunc initialised)
{
    if (initialised == NULL) {
        return 0;
    }
    PyErr_Format(PyExc_RuntimeError, "%.100s is already initialised", Py_TYPE(self)->tp_name);
    return -1;
}
