/* DjangoPath: the object Django holds for AegisMiddleware under a sync
 * handler (WSGI), called with each request. It starts the item, calls the
 * rest of the chain, notes status and body size of the response, and puts a
 * DjangoCloser among the response's resource closers, which Django calls once
 * when the server closes the response: the clock stops, the route is read
 * from the resolver match, the item is queued. It does what the Python
 * AegisMiddleware does (aegis_mw/contrib/django/middleware.py), which stays
 * the reference: a META that is not a dict goes to it whole, and the rare
 * cases (a mounted route, a streamed or file body, the chain raising, a route
 * pattern not seen before, trusted proxies) go to its methods. The closer is
 * in django_closer.c. */
#include "hotpath.h"

/* request.attr as a new reference. */
static inline PyObject *
attribute(PyObject *object, PyObject *name)
{
    return PyObject_GetAttr(object, name);
}

/* The Python middleware's own __call__, for what this path does not handle. */
static PyObject *
python_path(DjangoPathObject *self, PyObject *request)
{
    return PyObject_CallOneArg(self->rec.owner, request);
}

/* The request's item: method, path, start, request bytes and client, kept on
 * the request for process_exception. NULL with an error, or NULL with none
 * set when META is not a dict or the request is otherwise out of the usual
 * (*odd set: the Python path takes it). */
static ItemObject *
start_item(DjangoPathObject *self, PyObject *request, int *odd)
{
    PyObject *meta = attribute(request, aegis_str.meta);
    if (meta == NULL) {
        return NULL;
    }
    if (!PyDict_CheckExact(meta)) {
        Py_DECREF(meta);
        *odd = 1;
        return NULL;
    }
    ItemObject *item = NULL;
    PyObject *method = attribute(request, aegis_str.method);
    PyObject *path = method != NULL ? attribute(request, aegis_str.path) : NULL;
    PyObject *length = NULL, *client = NULL;
    double start;
    if (path == NULL) {
        goto done;
    }
    int named = aegis_truthy(method);
    if (named < 0) {
        goto done;
    }
    if (!named) {
        Py_SETREF(method, Py_NewRef(aegis_str.method_get));
    }
    if (aegis_now(&self->rec, &start) < 0) {
        goto done;
    }
    length = Py_XNewRef(PyDict_GetItemWithError(meta, aegis_str.content_length));
    PyObject *bytes = PyErr_Occurred() ? NULL : aegis_number_or_zero(length);
    client = bytes != NULL ? aegis_client_of(meta) : NULL;
    if (client != NULL) {
        int overflow = 0;
        long long count = PyLong_AsLongLongAndOverflow(bytes, &overflow);
        if (overflow) {
            /* A Content-Length past what the item holds: the Python path keeps
             * any int, so this request is its (nothing was counted yet). */
            *odd = 1;
        }
        else if (!(count == -1 && PyErr_Occurred())) {
            item = aegis_new_item(method, path, client);
            if (item != NULL) {
                item->start = start;
                item->request_bytes = count;
                if (self->rec.trace && aegis_trace_from_environ(&self->rec, item, meta) < 0) {
                    Py_CLEAR(item);
                }
            }
        }
    }
    Py_XDECREF(bytes);
    if (item != NULL
        && PyObject_SetAttr(request, aegis_str.item_attribute, (PyObject *)item) < 0) {
        Py_CLEAR(item);
    }
done:
    Py_DECREF(meta);
    Py_XDECREF(method);
    Py_XDECREF(path);
    Py_XDECREF(length);
    Py_XDECREF(client);
    return item;
}

/* Note the response's status and body, and ask Django to call our closer
 * when it closes the response: 0, or -1 with our failure set. */
static int
watch(DjangoPathObject *self, PyObject *request, ItemObject *item, PyObject *response)
{
    PyObject *status = attribute(response, aegis_str.status_code);
    if (status == NULL) {
        return -1;
    }
    aegis_item_set(item, I_STATUS, status);
    Py_DECREF(status);
    PyObject *streaming = attribute(response, aegis_str.streaming);
    int streamed = streaming != NULL ? PyObject_IsTrue(streaming) : -1;
    Py_XDECREF(streaming);
    if (streamed < 0) {
        return -1;
    }
    if (streamed) {  /* counted as it goes, by the Python path's wrapper */
        PyObject *done = PyObject_CallMethodObjArgs(
            self->rec.owner, aegis_str.watch_stream, (PyObject *)item, response, NULL);
        if (done == NULL) {
            return -1;
        }
        Py_DECREF(done);
    }
    else {
        if (aegis_now(&self->rec, &item->ttfb) < 0) {
            return -1;
        }
        item->has_ttfb = 1;
        PyObject *container = NULL;
        int found = aegis_optional_attr(response, aegis_str.container, &container);
        if (found < 0) {
            return -1;
        }
        if (found && container != Py_None) {
            int counted = aegis_item_count_chunks(item, I_RESPONSE_BYTES, container);
            Py_DECREF(container);
            if (counted < 0) {
                return -1;
            }
        }
        else {
            Py_XDECREF(container);
        }
    }
    PyObject *closers = attribute(response, aegis_str.resource_closers);
    if (closers == NULL) {
        return -1;
    }
    DjangoCloserObject *closer = aegis_django_closer_new(self, item, request);
    int appended = -1;
    if (closer != NULL && PyList_CheckExact(closers)) {
        appended = PyList_Append(closers, (PyObject *)closer);
    }
    else if (closer != NULL) {
        PyObject *done = PyObject_CallMethod(closers, "append", "O", (PyObject *)closer);
        appended = done != NULL ? 0 : -1;
        Py_XDECREF(done);
    }
    Py_XDECREF(closer);
    Py_DECREF(closers);
    return appended;
}

/* DjangoPath(request): the request through the rest of the chain. */
static PyObject *
django_path_call(PyObject *op, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    DjangoPathObject *self = (DjangoPathObject *)op;
    if (PyVectorcall_NARGS(nargsf) != 1 || kwnames != NULL) {
        PyErr_SetString(PyExc_TypeError, "DjangoPath expects (request)");
        return NULL;
    }
    if (self->get_response == NULL) {  /* not initialised, or emptied by the collector */
        PyErr_SetString(PyExc_RuntimeError, "DjangoPath is not initialised");
        return NULL;
    }
    PyObject *request = args[0];
    PyObject *path_info = attribute(request, aegis_str.path_info_attribute);
    if (path_info == NULL) {
        return NULL;
    }
    int mounted = PyDict_Contains(self->mounted, path_info);
    if (mounted != 0) {
        Py_DECREF(path_info);
        return mounted < 0 ? NULL
                           : PyObject_CallMethodOneArg(self->rec.owner, aegis_str.serve_mounted,
                                                       request);
    }
    int excluded = aegis_excluded(self->exclusions, path_info);
    Py_DECREF(path_info);
    if (excluded != 0) {  /* never recorded: the chain answers it alone */
        return excluded < 0 ? NULL : PyObject_Vectorcall(self->get_response, args, 1, NULL);
    }
    int odd = 0;
    ItemObject *item = start_item(self, request, &odd);
    if (item == NULL) {
        return odd ? python_path(self, request) : NULL;
    }
    self->rec.in_flight += 1;
    PyObject *response = PyObject_Vectorcall(self->get_response, args, 1, NULL);
    if (response == NULL) {  /* recorded by the Python path; the exception stays set */
        self->rec.in_flight -= 1;
        PyObject *exc = take_exception();
        PyObject *done = PyObject_CallMethodObjArgs(
            self->rec.owner, aegis_str.raised, request, (PyObject *)item, exc, NULL);
        Py_DECREF(item);
        if (done == NULL) {
            aegis_keep_original(&self->rec, exc);
            return NULL;
        }
        Py_DECREF(done);
        restore_exception(exc);
        return NULL;
    }
    if (watch(self, request, item, response) < 0) {
        /* Counted; the response goes out unrecorded rather than broken. */
        self->rec.in_flight -= 1;
        if (aegis_own_failure(&self->rec) < 0) {
            Py_DECREF(item);
            Py_DECREF(response);
            return NULL;
        }
    }
    Py_DECREF(item);
    return response;
}

/* process_exception(request, exception): the view's error, for the record. */
static PyObject *
django_path_process_exception(PyObject *op, PyObject *const *args, Py_ssize_t nargs)
{
    DjangoPathObject *self = (DjangoPathObject *)op;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "process_exception(request, exception)");
        return NULL;
    }
    return PyObject_CallMethodObjArgs(self->rec.owner, aegis_str.process_exception, args[0],
                                      args[1], NULL);
}

static int
django_path_init(DjangoPathObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {
        "owner", "get_response", "clock", "native_clock", "recorder", "mounted", "exclusions",
        "templates", "unmatched", "check_forwarded", NULL,
    };
    PyObject *owner, *get_response, *clock, *recorder, *mounted, *exclusions, *templates,
        *unmatched;
    int native_clock, check_forwarded;
    if (aegis_refuse_init_again((PyObject *)self, self->vectorcall) < 0) {
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$OOOpOO!O!O!Up:DjangoPath", keywords, &owner, &get_response, &clock,
            &native_clock, &recorder, &PyDict_Type, &mounted, &PyList_Type, &exclusions,
            &PyDict_Type, &templates, &unmatched, &check_forwarded)) {
        return -1;
    }
    if (aegis_recording_init(&self->rec, owner, clock, native_clock, recorder) < 0) {
        return -1;
    }
    Py_XSETREF(self->get_response, Py_NewRef(get_response));
    Py_XSETREF(self->mounted, Py_NewRef(mounted));
    Py_XSETREF(self->exclusions, Py_NewRef(exclusions));
    Py_XSETREF(self->templates, Py_NewRef(templates));
    Py_XSETREF(self->unmatched, Py_NewRef(unmatched));
    self->check_forwarded = check_forwarded;
    self->vectorcall = django_path_call;
    return 0;
}

static int
django_path_traverse(DjangoPathObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->get_response);
    Py_VISIT(self->mounted);
    Py_VISIT(self->exclusions);
    Py_VISIT(self->templates);
    Py_VISIT(self->unmatched);
    return aegis_recording_traverse(&self->rec, visit, arg);
}

static int
django_path_clear(DjangoPathObject *self)
{
    aegis_recording_clear(&self->rec);
    Py_CLEAR(self->get_response);
    Py_CLEAR(self->mounted);
    Py_CLEAR(self->exclusions);
    Py_CLEAR(self->templates);
    Py_CLEAR(self->unmatched);
    return 0;
}

static void
django_path_dealloc(DjangoPathObject *self)
{
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    django_path_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
django_path_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    DjangoPathObject *self = (DjangoPathObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->vectorcall = NULL;  /* until __init__ ran, calling it raises */
    }
    return (PyObject *)self;
}

static PyObject *
django_path_plain_call(PyObject *op, PyObject *args, PyObject *kwargs)
{
    DjangoPathObject *self = (DjangoPathObject *)op;
    if (self->get_response == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "DjangoPath was not initialised");
        return NULL;
    }
    return PyVectorcall_Call(op, args, kwargs);
}

static PyObject *
django_path_owner(PyObject *op, void *closure)
{
    DjangoPathObject *self = (DjangoPathObject *)op;
    return Py_NewRef(self->rec.owner != NULL ? self->rec.owner : Py_None);
}

static PyMethodDef django_path_methods[] = {
    {"process_exception", (PyCFunction)(void (*)(void))django_path_process_exception,
     METH_FASTCALL, "A view raised: its error is kept for the record."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef django_path_getset[] = {
    {"owner", django_path_owner, NULL, "The AegisMiddleware whose compiled path this is.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef django_path_members[] = {
    {"in_flight", T_PYSSIZET, offsetof(DjangoPathObject, rec.in_flight), 0,
     "Requests started and not yet finished on this path."},
    {NULL, 0, 0, 0, NULL},
};

PyTypeObject AegisDjangoPathType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aegis_mw._hotpath.DjangoPath",
    .tp_doc = "The compiled request path of one Django AegisMiddleware (sync handlers).",
    .tp_basicsize = sizeof(DjangoPathObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_vectorcall_offset = offsetof(DjangoPathObject, vectorcall),
    .tp_call = django_path_plain_call,
    .tp_new = django_path_new,
    .tp_init = (initproc)django_path_init,
    .tp_dealloc = (destructor)django_path_dealloc,
    .tp_traverse = (traverseproc)django_path_traverse,
    .tp_clear = (inquiry)django_path_clear,
    .tp_weaklistoffset = offsetof(DjangoPathObject, weakreflist),
    .tp_members = django_path_members,
    .tp_methods = django_path_methods,
    .tp_getset = django_path_getset,
};
