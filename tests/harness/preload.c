/*
 * mtwatch test harness: an LD_PRELOAD library that lets Debian's C xenstored (Xen 4.17) run on a
 * machine with no hypervisor.  It answers the few libxenctrl, libxenevtchn and libxengnttab calls the
 * daemon makes, and the libc open() of /proc/xen/xsd_port and /proc/xen/xsd_kva.
 *
 * Everything lives in one folder, $MTW_XS_DIR (else $XENSTORED_RUNDIR, else "."):
 *
 *   evtchn     FIFO: the event channel fd.  The harness writes 4-byte native port numbers to it; each is
 *              "an event on that port" for the daemon (xenevtchn_pending reads one).
 *   ring-N     4 KiB file: guest N's xenstore ring page (struct xenstore_domain_interface), mapped
 *              MAP_SHARED by xengnttab_map_grant_ref(N) and by the harness.
 *   notify-N   FIFO, optional: xenevtchn_notify() on guest N's port writes one byte to it (if someone
 *              has it open for reading), so the harness side of guest N wakes up.
 *   dead-N     if present, domain N does not exist any more (xc_domain_getinfo reports nothing).
 *   shutdown-N if present, domain N exists but is shut down (its text, if any, is the shutdown reason).
 *
 * Port numbers are fixed so the harness can compute them:
 *   VIRQ v                     -> port MTW_VIRQ_PORT_BASE + v   (VIRQ_DOM_EXC = 3 -> port 4)
 *   interdomain with domain N  -> port MTW_DOM_PORT_BASE + N    (dom0 -> 1024, guest 5 -> 1029)
 *
 * oxenstored has its socket fixed at /var/run/xenstored/socket: open(), bind(), connect(), unlink(), chmod()
 * and mkdir() of a path under /var/run/xenstored or /run/xenstored go to DIR instead, so several daemons run
 * side by side.  It also raises RLIMIT_NOFILE to fs.nr_open and dies when that fails (no CAP_SYS_RESOURCE,
 * as in a container): setrlimit() of RLIMIT_NOFILE past the hard limit is clamped to it.
 *
 * If $MTW_XS_PARENT holds a pid, a thread ends the daemon once its parent is no longer that pid, so a
 * harness that dies without cleaning up leaves no daemon behind.
 *
 * This is the mtwatch project's own code; it shares no code with Xen.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define MTW_PAGE 4096
#define MTW_VIRQ_PORT_BASE 1
#define MTW_DOM_PORT_BASE 1024
#define MTW_DOMID_LIMIT 0x7FF0 /* DOMID_FIRST_RESERVED */
#define MTW_DOM0_PORT "1"      /* what /proc/xen/xsd_port says: dom0's (remote) xenstore port */

/* Handles are opaque to the daemon: hand out addresses of distinct static objects. */
static char fake_xc, fake_gnttab;
static struct {
	int fd;
} fake_evtchn = {-1};

/* ---- helpers --------------------------------------------------------------------------------- */

static const char *state_dir(void)
{
	const char *dir = getenv("MTW_XS_DIR");
	if (!dir || !*dir)
		dir = getenv("XENSTORED_RUNDIR");
	if (!dir || !*dir)
		dir = ".";
	return dir;
}

/* Writes DIR/NAME (NAME printf-formatted) into buf; returns 0, or -1 with errno if it does not fit. */
static int state_path(char *buf, size_t size, const char *fmt, ...)
{
	char name[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(name)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	n = snprintf(buf, size, "%s/%s", state_dir(), name);
	if (n < 0 || (size_t)n >= size) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

static int state_exists(const char *fmt, unsigned int domid)
{
	char path[PATH_MAX];

	if (state_path(path, sizeof(path), fmt, domid) < 0)
		return 0;
	return access(path, F_OK) == 0;
}

/* ---- the fixed run folder of oxenstored --------------------------------------------------------- */

static const char *const fixed_rundirs[] = {"/var/run/xenstored", "/run/xenstored"};

/* If PATH is a fixed run folder or lies in one, writes its place in DIR to buf and returns buf; else PATH. */
static const char *redirect_path(const char *path, char *buf, size_t size)
{
	size_t i, n;
	int w;

	if (!path)
		return path;
	for (i = 0; i < sizeof(fixed_rundirs) / sizeof(fixed_rundirs[0]); i++) {
		n = strlen(fixed_rundirs[i]);
		if (strncmp(path, fixed_rundirs[i], n) != 0 || (path[n] != '\0' && path[n] != '/'))
			continue;
		w = snprintf(buf, size, "%s%s", state_dir(), path + n);
		if (w < 0 || (size_t)w >= size)
			return path; /* does not fit: leave it alone, the call then fails or succeeds as it would */
		return buf;
	}
	return path;
}

static void *real_symbol(void **slot, const char *name)
{
	if (!*slot)
		*slot = dlsym(RTLD_NEXT, name);
	if (!*slot)
		errno = ENOSYS;
	return *slot;
}

/* A unix address naming a fixed run folder, moved into DIR; returns addr itself when nothing changes. */
static const struct sockaddr *redirect_addr(const struct sockaddr *addr, socklen_t *len,
					    struct sockaddr_un *copy)
{
	const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
	char path[sizeof(un->sun_path) + 1];
	char moved[sizeof(un->sun_path)];
	const char *target;
	size_t n;

	if (!addr || *len <= offsetof(struct sockaddr_un, sun_path) || addr->sa_family != AF_UNIX)
		return addr;
	n = *len - offsetof(struct sockaddr_un, sun_path);
	if (n > sizeof(un->sun_path))
		n = sizeof(un->sun_path);
	memcpy(path, un->sun_path, n);
	path[n] = '\0';
	target = redirect_path(path, moved, sizeof(moved));
	if (target == path)
		return addr;
	memset(copy, 0, sizeof(*copy));
	copy->sun_family = AF_UNIX;
	memcpy(copy->sun_path, target, strlen(target) + 1);
	*len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(target) + 1);
	return (const struct sockaddr *)copy;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	static void *real;
	struct sockaddr_un copy;
	int (*fn)(int, const struct sockaddr *, socklen_t) = real_symbol(&real, "bind");

	if (!fn)
		return -1;
	addr = redirect_addr(addr, &len, &copy);
	return fn(fd, addr, len);
}

int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	static void *real;
	struct sockaddr_un copy;
	int (*fn)(int, const struct sockaddr *, socklen_t) = real_symbol(&real, "connect");

	if (!fn)
		return -1;
	addr = redirect_addr(addr, &len, &copy);
	return fn(fd, addr, len);
}

int unlink(const char *path)
{
	static void *real;
	char buf[PATH_MAX];
	int (*fn)(const char *) = real_symbol(&real, "unlink");

	return fn ? fn(redirect_path(path, buf, sizeof(buf))) : -1;
}

int chmod(const char *path, mode_t mode)
{
	static void *real;
	char buf[PATH_MAX];
	int (*fn)(const char *, mode_t) = real_symbol(&real, "chmod");

	return fn ? fn(redirect_path(path, buf, sizeof(buf)), mode) : -1;
}

int mkdir(const char *path, mode_t mode)
{
	static void *real;
	char buf[PATH_MAX];
	int (*fn)(const char *, mode_t) = real_symbol(&real, "mkdir");

	return fn ? fn(redirect_path(path, buf, sizeof(buf)), mode) : -1;
}

/* ---- setrlimit(): RLIMIT_NOFILE past the hard limit ----------------------------------------------- */

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
	static void *real;
	int (*fn)(__rlimit_resource_t, const struct rlimit *) = real_symbol(&real, "setrlimit");
	struct rlimit now, clamped;

	if (!fn)
		return -1;
	if (fn(resource, rlim) == 0)
		return 0;
	if (errno != EPERM || resource != RLIMIT_NOFILE || getrlimit(RLIMIT_NOFILE, &now) < 0)
		return -1;
	/* Without CAP_SYS_RESOURCE the hard limit cannot rise: keep it, as a host with a lower nr_open would. */
	clamped.rlim_max = now.rlim_max;
	clamped.rlim_cur = rlim->rlim_cur < now.rlim_max ? rlim->rlim_cur : now.rlim_max;
	return fn(resource, &clamped);
}

/* ---- libc open(): /proc/xen/xsd_port and /proc/xen/xsd_kva ------------------------------------- */

typedef int (*open_fn)(const char *, int, ...);

static int fake_proc_file(const char *path)
{
	int fd;

	if (strcmp(path, "/proc/xen/xsd_port") == 0) {
		static const char text[] = MTW_DOM0_PORT;

		fd = memfd_create("mtw-xsd-port", MFD_CLOEXEC);
		if (fd < 0)
			return -1;
		if (write(fd, text, sizeof(text) - 1) != (ssize_t)(sizeof(text) - 1) ||
		    lseek(fd, 0, SEEK_SET) != 0) {
			close(fd);
			errno = EIO;
			return -1;
		}
		return fd;
	}
	if (strcmp(path, "/proc/xen/xsd_kva") == 0) {
		/* dom0's own ring page: nobody talks through it here, it only has to be mappable. */
		fd = memfd_create("mtw-xsd-kva", MFD_CLOEXEC);
		if (fd < 0)
			return -1;
		if (ftruncate(fd, MTW_PAGE) < 0) {
			close(fd);
			return -1;
		}
		return fd;
	}
	return -2; /* not ours */
}

static int open_common(const char *symbol, const char *path, int flags, mode_t mode)
{
	static open_fn real_open, real_open64;
	open_fn *slot = strcmp(symbol, "open") == 0 ? &real_open : &real_open64;
	char moved[PATH_MAX];
	int fd;

	if (path) {
		fd = fake_proc_file(path);
		if (fd != -2)
			return fd;
		path = redirect_path(path, moved, sizeof(moved));
	}
	if (!*slot)
		*slot = (open_fn)dlsym(RTLD_NEXT, symbol);
	if (!*slot) {
		errno = ENOSYS;
		return -1;
	}
	return (*slot)(path, flags, mode);
}

static mode_t open_mode(int flags, va_list ap)
{
	if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE)
		return (mode_t)va_arg(ap, int);
	return 0;
}

int open(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	return open_common("open", path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	va_list ap;
	mode_t mode;

	va_start(ap, flags);
	mode = open_mode(flags, ap);
	va_end(ap);
	return open_common("open64", path, flags, mode);
}

/* ---- libxenctrl -------------------------------------------------------------------------------- */

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger,
				unsigned open_flags)
{
	(void)logger;
	(void)dombuild_logger;
	(void)open_flags;
	return (xc_interface *)&fake_xc;
}

int xc_interface_close(xc_interface *xch)
{
	(void)xch;
	return 0;
}

/* Every domid below DOMID_FIRST_RESERVED exists and runs, unless marked dead (or shut down). */
static int domain_state(uint32_t domid, int *shutdown, unsigned int *reason)
{
	char path[PATH_MAX];
	char text[16];
	int fd;
	ssize_t n;

	*shutdown = 0;
	*reason = 0;
	if (domid >= MTW_DOMID_LIMIT)
		return 0;
	if (domid != 0 && state_exists("dead-%u", domid))
		return 0;
	if (domid != 0 && state_path(path, sizeof(path), "shutdown-%u", domid) == 0) {
		fd = openat(AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			*shutdown = 1;
			n = read(fd, text, sizeof(text) - 1);
			if (n > 0) {
				text[n] = '\0';
				*reason = (unsigned int)strtoul(text, NULL, 10);
			}
			close(fd);
		}
	}
	return 1;
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info)
{
	int shutdown;
	unsigned int reason;

	(void)xch;
	/* Only the asked domid is ever reported: a dead one yields nothing (it "does not exist"). */
	if (max_doms == 0 || !info || !domain_state(first_domid, &shutdown, &reason))
		return 0;
	memset(info, 0, sizeof(*info));
	info->domid = first_domid;
	info->running = !shutdown;
	info->shutdown = shutdown ? 1 : 0;
	info->shutdown_reason = reason;
	info->nr_pages = 256;
	info->max_memkb = 1024;
	info->nr_online_vcpus = 1;
	info->cpupool = 0;
	return 1;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains,
			  xc_domaininfo_t *info)
{
	int shutdown;
	unsigned int reason;

	(void)xch;
	if (max_domains == 0 || !info || !domain_state(first_domain, &shutdown, &reason))
		return 0;
	memset(info, 0, sizeof(*info));
	info->domain = (domid_t)first_domain;
	info->flags = shutdown ? (XEN_DOMINF_shutdown | ((reason & XEN_DOMINF_shutdownmask)
							  << XEN_DOMINF_shutdownshift))
			       : XEN_DOMINF_running;
	info->tot_pages = 256;
	info->max_pages = 256;
	info->nr_online_vcpus = 1;
	return 1;
}

static void *map_ring_file(uint32_t domid, int prot)
{
	char path[PATH_MAX];
	struct stat st;
	void *addr;
	int fd;

	if (state_path(path, sizeof(path), "ring-%u", domid) < 0)
		return NULL;
	fd = openat(AT_FDCWD, path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return NULL;
	if (fstat(fd, &st) < 0 || (st.st_size < MTW_PAGE && ftruncate(fd, MTW_PAGE) < 0)) {
		int saved = errno;
		close(fd);
		errno = saved;
		return NULL;
	}
	addr = mmap(NULL, MTW_PAGE, prot, MAP_SHARED, fd, 0);
	close(fd);
	return addr == MAP_FAILED ? NULL : addr;
}

void *xc_map_foreign_range(xc_interface *xch, uint32_t dom, int size, int prot, unsigned long mfn)
{
	(void)xch;
	(void)mfn;
	if (size != MTW_PAGE) {
		errno = EINVAL;
		return NULL;
	}
	return map_ring_file(dom, prot);
}

/* ---- libxenevtchn ------------------------------------------------------------------------------ */

static xenevtchn_handle *evtchn_handle(int fd)
{
	fake_evtchn.fd = fd;
	return (xenevtchn_handle *)&fake_evtchn;
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned int open_flags)
{
	char path[PATH_MAX];
	int fd;

	(void)logger;
	if (fake_evtchn.fd >= 0)
		return (xenevtchn_handle *)&fake_evtchn;
	if (state_path(path, sizeof(path), "evtchn") < 0)
		return NULL;
	if (mkfifo(path, 0600) < 0 && errno != EEXIST)
		return NULL;
	/* O_RDWR: opening never blocks and reads never see EOF, whoever else has the FIFO open. */
	fd = openat(AT_FDCWD, path, O_RDWR | ((open_flags & XENEVTCHN_NO_CLOEXEC) ? 0 : O_CLOEXEC));
	if (fd < 0)
		return NULL;
	return evtchn_handle(fd);
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return evtchn_handle(fd);
}

int xenevtchn_close(xenevtchn_handle *xce)
{
	(void)xce;
	if (fake_evtchn.fd >= 0) {
		close(fake_evtchn.fd);
		fake_evtchn.fd = -1;
	}
	return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
	(void)xce;
	return fake_evtchn.fd;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
	char path[PATH_MAX];
	unsigned int domid;
	int fd;

	(void)xce;
	if (port < MTW_DOM_PORT_BASE || port >= MTW_DOM_PORT_BASE + MTW_DOMID_LIMIT)
		return 0;
	domid = port - MTW_DOM_PORT_BASE;
	if (domid == 0 || state_path(path, sizeof(path), "notify-%u", domid) < 0)
		return 0;
	/* Fails with ENOENT (no such FIFO) or ENXIO (nobody listening): then nobody needs waking. */
	fd = openat(AT_FDCWD, path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return 0;
	/* A full pipe (EAGAIN) already holds a pending wake-up. */
	if (write(fd, "!", 1) < 0) {
		/* nothing to do */
	}
	close(fd);
	return 0;
}

xenevtchn_port_or_error_t xenevtchn_bind_unbound_port(xenevtchn_handle *xce, uint32_t domid)
{
	(void)xce;
	if (domid >= MTW_DOMID_LIMIT) {
		errno = EINVAL;
		return -1;
	}
	return (xenevtchn_port_or_error_t)(MTW_DOM_PORT_BASE + domid);
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid,
						     evtchn_port_t remote_port)
{
	(void)remote_port;
	return xenevtchn_bind_unbound_port(xce, domid);
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
	(void)xce;
	if (virq >= MTW_DOM_PORT_BASE - MTW_VIRQ_PORT_BASE) {
		errno = EINVAL;
		return -1;
	}
	return (xenevtchn_port_or_error_t)(MTW_VIRQ_PORT_BASE + virq);
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

/* The daemon calls this once poll() found the fd readable: one 4-byte port number is there. */
xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
	uint32_t port;
	size_t got = 0;
	ssize_t n;

	(void)xce;
	while (got < sizeof(port)) {
		n = read(fake_evtchn.fd, (char *)&port + got, sizeof(port) - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return (xenevtchn_port_or_error_t)port;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
	(void)xce;
	(void)port;
	return 0;
}

/* ---- libxengnttab ------------------------------------------------------------------------------ */

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
	(void)logger;
	(void)open_flags;
	return (xengnttab_handle *)&fake_gnttab;
}

int xengnttab_close(xengnttab_handle *xgt)
{
	(void)xgt;
	return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
	(void)xgt;
	(void)nr_grants;
	return 0;
}

/* Guest `domid`'s ring page is the file DIR/ring-<domid>, whatever the grant reference. */
void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
	(void)xgt;
	(void)ref;
	if (domid >= MTW_DOMID_LIMIT) {
		errno = EINVAL;
		return NULL;
	}
	return map_ring_file(domid, prot);
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
	(void)xgt;
	return munmap(start_address, (size_t)count * MTW_PAGE);
}

/* ---- orphan guard ------------------------------------------------------------------------------ */

static pid_t watched_parent;

static void *parent_watch(void *arg)
{
	(void)arg;
	for (;;) {
		if (getppid() != watched_parent)
			_exit(0);
		usleep(200 * 1000);
	}
	return NULL;
}

__attribute__((constructor)) static void mtw_preload_init(void)
{
	const char *parent = getenv("MTW_XS_PARENT");
	pthread_attr_t attr;
	pthread_t thread;

	if (!parent || !*parent)
		return;
	watched_parent = (pid_t)strtol(parent, NULL, 10);
	if (watched_parent <= 1)
		return;
	if (getppid() != watched_parent)
		_exit(0);
	if (pthread_attr_init(&attr) != 0)
		return;
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 64 * 1024);
	pthread_create(&thread, &attr, parent_watch, NULL);
	pthread_attr_destroy(&attr);
}
