/* Exchange: one call of the middleware. Like a coroutine's body, nothing runs
 * before its first step, which starts the request (asgi_path.c). Awaiting it
 * then drives the app's coroutine exactly as `await` would: send, throw and
 * close are forwarded, and when the coroutine ends the request is finished
 * (finish.c). The server (or the middleware's own coroutine) holds it; the app
 * gets a Sender and a Receiver instead. */
#include "hotpath.h"

static PyObject *
already_executing(void)
{
    PyErr_SetString(PyExc_ValueError, "aegis_mw request already executing");
    return NULL;
}

/* A call not started: dropped, as a coroutine closed before its first step. */
static void
forget_call(ExchangeObject *self)
{
    if (self->send != NULL) {
        Py_CLEAR(self->send);  /* first: with it, a step would start the call */
        Py_CLEAR(self->receive);
        Py_CLEAR(self->scope);
    }
}

/* One step of the app's coroutine, as `await` would take it. */
static PySendResult
exchange_step(ExchangeObject *self, PyObject *arg, PyObject **result)
{
    *result = NULL;
    if (self->running) {
        already_executing();
        return PYGEN_ERROR;
    }
    if (self->send != NULL) {  /* the first step */
        if (arg != Py_None) {
            PyErr_SetString(PyExc_TypeError,
                            "can't send non-None value to a just-started aegis_mw request");
            return PYGEN_ERROR;
        }
        self->running = 1;  /* the app's call runs its code */
        int started = aegis_exchange_start(self);
        self->running = 0;
        if (started < 0) {
            return PYGEN_ERROR;
        }
    }
    if (self->inner == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse an awaited aegis_mw request");
        return PYGEN_ERROR;
    }
    PyObject *inner = Py_NewRef(self->inner);
    self->running = 1;
    PySendResult status = PyIter_Send(inner, arg, result);
    self->running = 0;
    if (status == PYGEN_NEXT) {
        Py_DECREF(inner);
        return status;
    }
    Py_CLEAR(self->inner);  /* it ended; it may hold a cycle back to us */
    Py_DECREF(inner);
    if (status == PYGEN_RETURN) {
        /* Like the Python path, the middleware returns None whatever the app did. */
        Py_SETREF(*result, Py_NewRef(Py_None));
        if (aegis_finish_returned(self) < 0) {
            Py_CLEAR(*result);
            return PYGEN_ERROR;
        }
        return PYGEN_RETURN;
    }
    aegis_finish_raised(self);
    return PYGEN_ERROR;
}

static PySendResult
exchange_am_send(PyObject *op, PyObject *arg, PyObject **result)
{
    return exchange_step((ExchangeObject *)op, arg, result);
}

static PyObject *
exchange_iternext(PyObject *op)
{
    PyObject *result;
    PySendResult status = exchange_step((ExchangeObject *)op, Py_None, &result);
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        Py_DECREF(result);  /* None: exhausted without an exception means StopIteration() */
    }
    return NULL;
}

static PyObject *
exchange_send_method(PyObject *op, PyObject *arg)
{
    PyObject *result;
    PySendResult status = exchange_step((ExchangeObject *)op, arg, &result);
    if (status == PYGEN_NEXT) {
        return result;
    }
    if (status == PYGEN_RETURN) {
        Py_DECREF(result);
        PyErr_SetNone(PyExc_StopIteration);
    }
    return NULL;
}

/* exc = type(value), as PyErr_NormalizeException makes it: a new reference,
 * or the error of the constructor (taken out, as it is what gets raised). */
static PyObject *
instance_of(PyObject *kind, PyObject *value)
{
    if (PyExceptionInstance_Check(value)) {
        int subclass = PyObject_IsSubclass((PyObject *)Py_TYPE(value), kind);
        if (subclass < 0) {
            return take_exception();
        }
        if (subclass) {
            return Py_NewRef(value);
        }
    }
    PyObject *exc = value == Py_None      ? PyObject_CallNoArgs(kind)
                    : PyTuple_Check(value) ? PyObject_Call(kind, value, NULL)
                                           : PyObject_CallOneArg(kind, value);
    if (exc != NULL && !PyExceptionInstance_Check(exc)) {
        PyErr_Format(PyExc_TypeError,
                     "calling %R should have returned an instance of BaseException, not %.100s",
                     kind, Py_TYPE(exc)->tp_name);
        Py_CLEAR(exc);
    }
    return exc != NULL ? exc : take_exception();
}

/* What throw(...) raises at an await whose iterator has no throw(), as
 * CPython's _gen_throw makes it there: the exception (a new reference, an
 * error of its constructor included), or NULL with the TypeError that throw()
 * itself raises for arguments that cannot be raised, without entering the
 * frame. */
static PyObject *
thrown_exception(PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *kind = args[0];
    PyObject *value = nargs > 1 ? args[1] : Py_None;
    PyObject *traceback = nargs > 2 ? args[2] : Py_None;
    PyObject *exc;
    if (traceback != Py_None && !PyTraceBack_Check(traceback)) {
        PyErr_SetString(PyExc_TypeError, "throw() third argument must be a traceback object");
        return NULL;
    }
    if (PyExceptionClass_Check(kind)) {
        exc = instance_of(kind, value);
    }
    else if (PyExceptionInstance_Check(kind)) {
        if (value != Py_None) {
            PyErr_SetString(PyExc_TypeError, "instance exception may not have a separate value");
            return NULL;
        }
        exc = Py_NewRef(kind);
    }
    else {
        PyErr_Format(PyExc_TypeError,
                     "exceptions must be classes or instances deriving from BaseException, "
                     "not %.100s", Py_TYPE(kind)->tp_name);
        return NULL;
    }
    if (traceback != Py_None && PyException_SetTraceback(exc, traceback) < 0) {
        Py_DECREF(exc);
        return take_exception();
    }
    return exc;
}

/* inner.throw(*args), as CPython's _gen_throw hands a thrown exception to the
 * iterator an await delegates to: the arguments as given (a throw() of the
 * app's own sees them as the Python path's await gives them). To a generator
 * or a coroutine CPython gives them without a warning, while its throw()
 * method warns about the (type, value, traceback) form since 3.12: the
 * caller's own throw() warned already, so that call ignores the warning. */
static PyObject *
forward_throw(ExchangeObject *self, PyObject *inner, PyObject *throw, PyObject *const *args,
              Py_ssize_t nargs)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (nargs > 1 && (PyGen_CheckExact(inner) || PyCoro_CheckExact(inner))) {
        PyObject *call_args[4] = {throw, args[0], args[1], nargs > 2 ? args[2] : NULL};
        return PyObject_Vectorcall(self->path->throw_quietly, call_args, (size_t)nargs + 1, NULL);
    }
#endif
    return PyObject_Vectorcall(throw, args, (size_t)nargs, NULL);
}

static PyObject *
exchange_throw(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    ExchangeObject *self = (ExchangeObject *)op;
    if (nargs < 1 || nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "throw expected 1 to 3 arguments");
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030C0000
    /* Stepped by the server itself (the instance's call returned this
     * exchange), the form a coroutine's throw() warns about warns here too;
     * awaited by a coroutine, whose throw() warned already, it does not. */
    if (nargs > 1 && !self->awaited &&
        PyErr_WarnEx(PyExc_DeprecationWarning,
                     "the (type, exc, tb) signature of throw() is deprecated, "
                     "use the single-arg signature instead.",
                     1) < 0) {
        return NULL;
    }
#endif
    if (self->running) {
        return already_executing();
    }
    if (self->inner == NULL) {
        /* A finished request, or one not started: it is raised right here, and
         * one not started never starts (a coroutine's body never runs). */
        PyObject *exc = thrown_exception(args, nargs);
        if (exc != NULL) {
            forget_call(self);
            restore_exception(exc);
        }
        return NULL;
    }
    PyObject *inner = Py_NewRef(self->inner);
    PyObject *throw = NULL, *result = NULL;
    self->running = 1;  /* the lookup and the call run the app's code */
    int found = aegis_optional_attr(inner, aegis_str.throw, &throw);
    if (found > 0) {
        result = forward_throw(self, inner, throw, args, nargs);
        Py_DECREF(throw);
    }
    self->running = 0;
    if (found == 0) {
        /* An iterator without throw(): the exception surfaces at the await,
         * that is in the app's stead, as `yield from` does. */
        PyObject *exc = thrown_exception(args, nargs);
        if (exc == NULL) {
            found = -1;
        }
        else {
            restore_exception(exc);
        }
    }
    if (found < 0) {
        /* The lookup failed, or the arguments cannot be raised: that error
         * leaves throw(), and the request stays as it was, as CPython leaves
         * the awaiting frame it did not enter. */
        Py_DECREF(inner);
        return NULL;
    }
    if (result != NULL) {
        Py_DECREF(inner);
        return result;  /* the app caught it and awaits something else */
    }
    if (self->inner == inner) {
        Py_CLEAR(self->inner);
    }
    Py_DECREF(inner);
    int raised_here = found == 0;
    if (!raised_here && PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyErr_Clear();  /* the app caught it and returned */
        if (aegis_finish_returned(self) < 0) {
            return NULL;
        }
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
    }
    if (raised_here && PyErr_ExceptionMatches(PyExc_StopIteration)) {
        /* A StopIteration raised at the await, as the Python path's coroutine
         * frame would take it there. */
#if PY_VERSION_HEX >= 0x030C0000
        /* Since 3.12 (CLEANUP_THROW) it is what the await returns: the app
         * returned, and so does the middleware. */
        PyErr_Clear();
        if (aegis_finish_returned(self) < 0) {
            return NULL;
        }
        PyErr_SetNone(PyExc_StopIteration);
        return NULL;
#else
        /* Before, it leaves the middleware's coroutine, recorded, as the
         * RuntimeError of PEP 479. */
        aegis_finish_raised(self);
        stop_iteration_to_runtime_error("coroutine raised StopIteration");
        return NULL;
#endif
    }
    aegis_finish_raised(self);
    return NULL;
}

/* Close the app's coroutine (a cancelled or discarded request): recorded like
 * the Python path records GeneratorExit, as a request nobody got an answer to. */
static PyObject *
exchange_close(PyObject *op, PyObject *unused)
{
    ExchangeObject *self = (ExchangeObject *)op;
    if (self->running) {
        return already_executing();
    }
    if (self->inner == NULL) {
        forget_call(self);  /* one not started never starts */
        Py_RETURN_NONE;
    }
    PyObject *inner = self->inner;
    self->inner = NULL;
    PyObject *close = NULL;
    PyObject *result = Py_NewRef(Py_None);
    self->running = 1;
    if (aegis_optional_attr(inner, aegis_str.close, &close) < 0) {
        PyErr_WriteUnraisable(inner);  /* as CPython's gen_close_iter: then closed anyway */
    }
    if (close != NULL) {
        Py_SETREF(result, PyObject_CallNoArgs(close));
        Py_DECREF(close);
    }
    self->running = 0;
    Py_DECREF(inner);
    if (result == NULL) {
        aegis_finish_raised(self);
        return NULL;
    }
    Py_DECREF(result);
    PyErr_SetNone(PyExc_GeneratorExit);
    aegis_finish_raised(self);
    if (!PyErr_ExceptionMatches(PyExc_GeneratorExit)) {
        return NULL;  /* something of ours that must not be swallowed */
    }
    PyErr_Clear();
    Py_RETURN_NONE;
}

static PyObject *
exchange_await(PyObject *op)
{
    ExchangeObject *self = (ExchangeObject *)op;
    if (self->running) {
        return already_executing();
    }
    self->awaited = 1;
    return Py_NewRef(op);
}

/* iter(): what `yield from` in a generator-based coroutine takes, which
 * awaits it as `await` does. */
static PyObject *
exchange_iter(PyObject *op)
{
    ((ExchangeObject *)op)->awaited = 1;
    return Py_NewRef(op);
}

/* At the end of an exchange: one still running is closed (recorded as the
 * Python path records GeneratorExit); one dropped before its first step
 * (neither started nor closed) warns as the coroutine of the Python path's
 * __call__ does when it is never awaited, with its category and text. A
 * failure of either is unraisable, as CPython's are. */
static void
exchange_finalize(PyObject *op)
{
    ExchangeObject *self = (ExchangeObject *)op;
    int never_awaited = self->send != NULL;
    if (!never_awaited && self->inner == NULL) {
        return;
    }
    PyObject *saved = PyErr_Occurred() ? take_exception() : NULL;
    if (never_awaited) {
        if (PyErr_WarnEx(PyExc_RuntimeWarning,
                         "coroutine 'AegisMiddleware.__call__' was never awaited", 1) < 0) {
            PyErr_WriteUnraisable(op);
        }
    }
    else {
        PyObject *result = exchange_close(op, NULL);
        if (result == NULL) {
            PyErr_WriteUnraisable(op);
        }
        Py_XDECREF(result);
    }
    if (saved != NULL) {
        restore_exception(saved);
    }
}

static int
exchange_traverse(ExchangeObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->path);
    Py_VISIT(self->item);
    Py_VISIT(self->scope);
    Py_VISIT(self->inner);
    Py_VISIT(self->receive);
    Py_VISIT(self->send);
    return 0;
}

static int
exchange_clear(ExchangeObject *self)
{
    Py_CLEAR(self->send);  /* first: with it, a step would start the call */
    Py_CLEAR(self->receive);
    Py_CLEAR(self->path);
    Py_CLEAR(self->item);
    Py_CLEAR(self->scope);
    Py_CLEAR(self->inner);
    return 0;
}

static void
exchange_dealloc(ExchangeObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;  /* resurrected */
    }
    PyObject_GC_UnTrack(self);
    exchange_clear(self);
    PyObject_GC_Del(self);
}

static PyAsyncMethods exchange_as_async = {
    .am_await = exchange_await,
    .am_send = exchange_am_send,
};

static PyMethodDef exchange_methods[] = {
    {"send", (PyCFunction)exchange_send_method, METH_O, "Resume the app with a value."},
    {"throw", (PyCFunction)(void (*)(void))exchange_throw, METH_FASTCALL,
     "Raise an exception in the app."},
    {"close", exchange_close, METH_NOARGS, "Close the app's coroutine."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject AegisExchangeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.Exchange",
    .tp_doc = "One call of AegisMiddleware: awaiting it runs the app.",
    .tp_basicsize = sizeof(ExchangeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_dealloc = (destructor)exchange_dealloc,
    .tp_finalize = exchange_finalize,
    .tp_traverse = (traverseproc)exchange_traverse,
    .tp_clear = (inquiry)exchange_clear,
    .tp_as_async = &exchange_as_async,
    .tp_iter = exchange_iter,
    .tp_iternext = exchange_iternext,
    .tp_methods = exchange_methods,
};
