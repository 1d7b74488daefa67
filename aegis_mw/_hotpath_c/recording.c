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
    /* owner.trace_source: None (off), or (context variable or None, key or None). */
    PyObject *source = PyObject_GetAttr(owner, aegis_str.trace_source);
    if (source == NULL) {
        Py_DECREF(bounds);
        Py_DECREF(inbox);
        Py_DECREF(append);
        return -1;
    }
    PyObject *variable = NULL, *key = NULL;
    if (source != Py_None) {
        if (!PyTuple_CheckExact(source) || PyTuple_GET_SIZE(source) != 2
            || (PyTuple_GET_ITEM(source, 0) != Py_None
                && !PyContextVar_CheckExact(PyTuple_GET_ITEM(source, 0)))
            || (PyTuple_GET_ITEM(source, 0) != Py_None
                && !PyUnicode_CheckExact(PyTuple_GET_ITEM(source, 1)))) {
            Py_DECREF(source);
            Py_DECREF(bounds);
            Py_DECREF(inbox);
            Py_DECREF(append);
            PyErr_SetString(PyExc_TypeError,
                            "owner.trace_source must be None or (ContextVar | None, str | None)");
            return -1;
        }
        if (PyTuple_GET_ITEM(source, 0) != Py_None) {
            variable = Py_NewRef(PyTuple_GET_ITEM(source, 0));
            key = Py_NewRef(PyTuple_GET_ITEM(source, 1));
        }
    }
    rec->trace = source != Py_None;
    Py_DECREF(source);
    Py_XSETREF(rec->trace_var, variable);
    Py_XSETREF(rec->trace_key, key);
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
    Py_VISIT(rec->trace_var);
    Py_VISIT(rec->trace_key);
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
    Py_CLEAR(rec->trace_var);
    Py_CLEAR(rec->trace_key);
}

/* OpenTelemetry's current span, as core/trace_context.py's current_span reads
 * it: a new reference, or NULL (an error set, or none current). */
static PyObject *
current_span(AegisRecording *rec)
{
    if (rec->trace_var == NULL) {
        return NULL;
    }
    PyObject *context;
    if (PyContextVar_Get(rec->trace_var, Py_None, &context) < 0) {
        return NULL;
    }
    PyObject *span = NULL;
    if (PyDict_Check(context)) {
        span = Py_XNewRef(PyDict_GetItemWithError(context, rec->trace_key));
    }
    Py_DECREF(context);
    if (span == Py_None) {
        Py_CLEAR(span);
    }
    return span;
}

/* The item's trace context at the request's start, from an ASGI scope: the
 * current span, else the traceparent header if there is exactly one
 * (trace_context.asgi_trace). 0, or -1 with an error set. */
int
aegis_trace_from_headers(AegisRecording *rec, ItemObject *item, PyObject *scope)
{
    PyObject *found = current_span(rec);
    if (found == NULL && PyErr_Occurred()) {
        return -1;
    }
    if (found == NULL) {
        PyObject *headers;
        if (PyDict_CheckExact(scope)) {
            headers = Py_XNewRef(PyDict_GetItemWithError(scope, aegis_str.headers));
            if (headers == NULL && PyErr_Occurred()) {
                return -1;
            }
        }
        else {
            headers = PyObject_CallMethodOneArg(scope, aegis_str.get, aegis_str.headers);
            if (headers == NULL) {
                return -1;
            }
        }
        /* Nothing below runs Python code: the list cannot change under the loop. */
        int seen = 0;
        if (headers != NULL && (PyList_CheckExact(headers) || PyTuple_CheckExact(headers))) {
            Py_ssize_t count = PySequence_Fast_GET_SIZE(headers);
            PyObject **entries = PySequence_Fast_ITEMS(headers);
            for (Py_ssize_t index = 0; index < count; index++) {
                PyObject *entry = entries[index];
                if ((PyTuple_CheckExact(entry) || PyList_CheckExact(entry))
                    && PySequence_Fast_GET_SIZE(entry) == 2) {
                    PyObject *name = PySequence_Fast_GET_ITEM(entry, 0);
                    if (PyBytes_CheckExact(name) && PyBytes_GET_SIZE(name) == 11
                        && memcmp(PyBytes_AS_STRING(name), "traceparent", 11) == 0) {
                        if (seen) {  /* two: none is to be trusted (W3C) */
                            Py_CLEAR(found);
                            break;
                        }
                        seen = 1;
                        found = Py_NewRef(PySequence_Fast_GET_ITEM(entry, 1));
                    }
                }
            }
        }
        Py_XDECREF(headers);
    }
    if (found != NULL) {
        aegis_item_set(item, I_TRACE, found);
        Py_DECREF(found);
    }
    return 0;
}

/* At the response's start: OpenTelemetry's span current now, where none was
 * at the request's start (an instrumentation inside ours, as Flask's); as
 * trace_context.response_trace. 0, or -1 with an error set. */
int
aegis_trace_at_response(AegisRecording *rec, ItemObject *item)
{
    PyObject *trace = item->trace;
    if (rec->trace_var == NULL
        || (trace != NULL && trace != Py_None && !PyUnicode_CheckExact(trace)
            && !PyBytes_CheckExact(trace))) {
        return 0;
    }
    PyObject *span = current_span(rec);
    if (span == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    aegis_item_set(item, I_TRACE, span);
    Py_DECREF(span);
    return 0;
}

/* The same from a WSGI environ or Django's request.META (environ_trace). */
int
aegis_trace_from_environ(AegisRecording *rec, ItemObject *item, PyObject *environ)
{
    PyObject *found = current_span(rec);
    if (found == NULL && PyErr_Occurred()) {
        return -1;
    }
    if (found == NULL && PyDict_CheckExact(environ)) {
        found = Py_XNewRef(PyDict_GetItemWithError(environ, aegis_str.environ_traceparent));
        if (found == NULL && PyErr_Occurred()) {
            return -1;
        }
    }
    if (found != NULL && found != Py_None) {
        aegis_item_set(item, I_TRACE, found);
    }
    Py_XDECREF(found);
    return 0;
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
