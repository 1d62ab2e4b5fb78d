/*
 * sprite-helper: the per-sprite supervisor and namespace init of the built-in
 * runtime.
 *
 *   sprite-helper start [options] -- COMMAND [ARG...]
 *   sprite-helper exec --pid PID --start TICKS [options] -- COMMAND [ARG...]
 *   sprite-helper --version
 *
 * start: the launched process prepares the console (a pty, a ring file of
 * recent output, a unix socket), forks the supervisor and exits. The
 * supervisor clones the init into new PID, mount, UTS, IPC and (unless
 * --network host) network namespaces. The init joins the sprite's cgroups,
 * builds the sprite's own root with --root (see setup_root: host /usr
 * read-only, a generated /etc, fresh /proc and /dev, private /tmp, /work and
 * /home/sprite from --files, the --mount binds) and pivots into it, sets the
 * hostname, brings loopback up, moves into a user namespace (--userns 2: the
 * supervisor maps 0-65535 inside to --uid-base on the host; --userns 1: the
 * namespace was made with the clone and maps root to the caller), forbids
 * nested user namespaces, and runs COMMAND on the console as a session leader
 * with --user's ids, no capabilities (empty bounding set) and no_new_privs;
 * it reaps every process of the sprite, turns SIGTERM into SIGTERM for
 * everyone plus a console hangup, and exits as soon as its children are gone.
 * The supervisor holds the pty master, copies console output into the ring
 * and to attached clients, feeds client input to the console, and records how
 * the sprite ended.
 *
 * exec: joins the sprite's cgroups and namespaces (user namespace last with
 * --userns 2), then forks COMMAND with the same privilege drop as the
 * sprite's own command; stdin, stdout and stderr are the caller's.
 *
 * The caller hears one line on --ready-fd: "ok" from the init once COMMAND
 * has been executed (the supervisor has recorded the pids by then), or
 * "err <reason>" from whichever step failed. --lock-fd is the caller's
 * locked record directory; the helper only closes its copies of it.
 *
 * Records, all in the sprite's directory: "console" (ring: "SPRC", u32 size,
 * u64 bytes written, then the data), "log" (one line per event), "pids"
 * (key=value) and "exit" (key=value, written once by whoever sees the end
 * first: the init knows the command's status, the supervisor the init's).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>
#include <linux/capability.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

#define HELPER_VERSION "1"
#define RING_SIZE 65536u
#define RING_HEADER 16u
#define MAX_CLIENTS 8
#define MAX_CGROUPS 8
#define MAX_MOUNTS 32
#define MAX_ENV 4096
#define USERNS_RANGE 65536u

struct ring_header {
    char magic[4];
    uint32_t size;
    uint64_t total;
};

static const char *g_name, *g_id, *g_socket, *g_oom_file, *g_limit_text, *g_workdir;
static const char *g_user;
static const char *g_cgroups[MAX_CGROUPS];
static int g_ncgroups;
/* 0: no user namespace; 1: made with the clone (root maps to the caller);
 * 2: entered by the init after its setup (0-65535 map to g_uid_base). */
static int g_userns;
static unsigned long g_uid_base;
static int g_netns = 1;
static const char *g_root, *g_files;
static const char *g_mount_src[MAX_MOUNTS], *g_mount_dst[MAX_MOUNTS];
static int g_mount_rw[MAX_MOUNTS], g_mount_fds[MAX_MOUNTS], g_mount_dirs[MAX_MOUNTS], g_nmounts;
static char **g_argv;

static int g_lock_fd = -1, g_ready = -1, g_dirfd = -1, g_log = -1;
static int g_master = -1, g_slave = -1, g_listen = -1, g_sigfd = -1;
static int g_cgroup_fds[MAX_CGROUPS];
static struct ring_header *g_ring;
static char *g_ring_data;
static char g_pts[64];

static int g_clients[MAX_CLIENTS];
static int g_nclients;
static int g_master_open = 1;

/* ---------------------------------------------------------------- utilities */

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        buf += w;
        len -= (size_t)w;
    }
}

static void log_line(const char *fmt, ...)
{
    char buf[1024];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n, m;

    if (g_log < 0)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = (int)strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(buf + n, sizeof buf - (size_t)n, ".%03ldZ ", ts.tv_nsec / 1000000);
    va_start(ap, fmt);
    m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    n += m;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    write_all(g_log, buf, (size_t)n);
}

static void ready_msg(const char *fmt, ...)
{
    char buf[600];
    va_list ap;
    int n;

    if (g_ready < 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n >= (int)sizeof buf)
        n = (int)sizeof buf - 1;
    write_all(g_ready, buf, (size_t)n);
}

static const char *reason_for(int err)
{
    if (err == EPERM || err == EACCES || err == EROFS)
        return "permission denied";
    return strerror(err);
}

/* Report a failed start to the caller and stop. */
static void __attribute__((noreturn)) fail(const char *fmt, ...)
{
    char reason[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    for (char *p = reason; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    ready_msg("err %s\n", reason);
    log_line("start failed: %s", reason);
    _exit(1);
}

static int valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63)
        return 0;
    if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return 0;
    }
    return 1;
}

/* Process start time in clock ticks since boot (field 22 of /proc/<pid>/stat). */
static unsigned long long proc_start(pid_t pid)
{
    char path[64], buf[1024];
    ssize_t n;
    int fd;
    char *p;

    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    p = strrchr(buf, ')');
    if (!p)
        return 0;
    p++;
    /* p now points before field 3; field 22 is 20 fields further. */
    for (int field = 3; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p)
            return 0;
    }
    return strtoull(p + 1, NULL, 10);
}

/* Write a record file atomically; with noreplace an existing one wins. */
static int write_record(const char *name, const char *tmpname, const char *content, int noreplace)
{
    int fd = openat(g_dirfd, tmpname, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    write_all(fd, content, strlen(content));
    close(fd);
    if (renameat2(g_dirfd, tmpname, g_dirfd, name, noreplace ? RENAME_NOREPLACE : 0) < 0) {
        int err = errno;
        unlinkat(g_dirfd, tmpname, 0);
        errno = err;
        return -1;
    }
    return 0;
}

static long read_oom_kills(void)
{
    char buf[1024];
    ssize_t n;
    int fd;
    char *p;

    if (!g_oom_file)
        return 0;
    fd = open(g_oom_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (p = buf; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, "oom_kill ", 9) == 0)
            return atol(p + 9);
    }
    return 0;
}

/* A unix socket path may be longer than sun_path: go through the directory fd. */
static int socket_address(const char *path, struct sockaddr_un *addr, int *dirfd_out)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    *dirfd_out = -1;
    if (strlen(path) < sizeof addr->sun_path) {
        strcpy(addr->sun_path, path);
        return 0;
    }
    const char *slash = strrchr(path, '/');
    if (!slash || strlen(slash + 1) > 64)
        return -1;
    char dir[PATH_MAX];
    size_t dlen = (size_t)(slash - path);
    if (dlen == 0 || dlen >= sizeof dir)
        return -1;
    memcpy(dir, path, dlen);
    dir[dlen] = '\0';
    int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0)
        return -1;
    snprintf(addr->sun_path, sizeof addr->sun_path, "/proc/self/fd/%d/%s", dfd, slash + 1);
    *dirfd_out = dfd;
    return 0;
}

static void unlink_socket(void)
{
    struct sockaddr_un addr;
    int dfd;

    if (!g_socket || socket_address(g_socket, &addr, &dfd) < 0)
        return;
    unlink(addr.sun_path);
    if (dfd >= 0)
        close(dfd);
}

/* ------------------------------------------------------------------ console */

static void ring_append(const char *buf, size_t n)
{
    uint64_t total = g_ring->total;
    size_t pos, first;

    if (n > RING_SIZE) {
        total += n - RING_SIZE;
        buf += n - RING_SIZE;
        n = RING_SIZE;
    }
    pos = (size_t)(total % RING_SIZE);
    first = RING_SIZE - pos < n ? RING_SIZE - pos : n;
    memcpy(g_ring_data + pos, buf, first);
    memcpy(g_ring_data, buf + first, n - first);
    __atomic_store_n(&g_ring->total, total + n, __ATOMIC_RELEASE);
}

static void drop_client(int i, const char *why)
{
    log_line("console client detached%s%s", why ? ": " : "", why ? why : "");
    close(g_clients[i]);
    g_clients[i] = g_clients[--g_nclients];
}

static int send_all_now(int fd, const char *buf, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        n -= (size_t)w;
    }
    return 0;
}

static void broadcast(const char *buf, size_t n)
{
    for (int i = 0; i < g_nclients;) {
        if (send_all_now(g_clients[i], buf, n) < 0) {
            drop_client(i, errno == EAGAIN ? "too slow" : "gone");
            continue;
        }
        i++;
    }
}

/* Read what the console has; all of it when draining at the end. */
static void pump_master(int drain)
{
    char buf[8192];

    for (int rounds = 0; g_master_open && (drain || rounds < 16); rounds++) {
        ssize_t r = read(g_master, buf, sizeof buf);
        if (r > 0) {
            ring_append(buf, (size_t)r);
            broadcast(buf, (size_t)r);
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return;
        g_master_open = 0; /* EIO: nobody holds the console any more */
    }
}

static void accept_client(void)
{
    struct ucred cred;
    socklen_t len = sizeof cred;
    int c = accept4(g_listen, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

    if (c < 0)
        return;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        (cred.uid != 0 && cred.uid != getuid()) || g_nclients >= MAX_CLIENTS) {
        close(c);
        return;
    }
    /* Replay recent output so the client sees where the console is. */
    uint64_t total = __atomic_load_n(&g_ring->total, __ATOMIC_ACQUIRE);
    size_t have = total < RING_SIZE ? (size_t)total : RING_SIZE;
    size_t start = (size_t)((total - have) % RING_SIZE);
    size_t first = RING_SIZE - start < have ? RING_SIZE - start : have;
    if (send_all_now(c, g_ring_data + start, first) < 0 ||
        send_all_now(c, g_ring_data, have - first) < 0) {
        close(c);
        return;
    }
    g_clients[g_nclients++] = c;
    log_line("console client attached (pid %d)", (int)cred.pid);
}

static void client_input(int i)
{
    char buf[4096];
    ssize_t r = read(g_clients[i], buf, sizeof buf);

    if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) {
        drop_client(i, NULL);
        return;
    }
    if (r < 0 || !g_master_open)
        return;
    const char *p = buf;
    size_t n = (size_t)r;
    while (n > 0) {
        ssize_t w = write(g_master, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            break; /* console input full: drop the rest, like a busy serial line */
        }
        p += w;
        n -= (size_t)w;
    }
}

/* --------------------------------------------------------------------- init */

static void init_report(int fd, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n >= (int)sizeof buf)
        n = (int)sizeof buf - 1;
    write_all(fd, buf, (size_t)n);
}

static void loopback_up(void)
{
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

    if (s < 0)
        return;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) == 0) {
        ifr.ifr_flags |= IFF_UP;
        ioctl(s, SIOCSIFFLAGS, &ifr);
    }
    close(s);
}

static int parse_user(const char *spec, uid_t *uid, gid_t *gid)
{
    char *end;
    unsigned long u = strtoul(spec, &end, 10);
    if (end == spec || *end != ':')
        return -1;
    const char *g = end + 1;
    unsigned long gv = strtoul(g, &end, 10);
    if (end == g || *end != '\0')
        return -1;
    *uid = (uid_t)u;
    *gid = (gid_t)gv;
    return 0;
}

/* Take the command's identity (uid:gid, or keep ours when NULL) and give up
 * every privilege for good: an empty capability bounding set, no ambient,
 * permitted or effective capabilities, and no_new_privs, so neither root
 * inside nor a setuid file can gain any. -1 with the reason in why. */
static int drop_privileges(const char *user, char *why, size_t whylen)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    uid_t uid = 0;
    gid_t gid = 0;

    if (user && parse_user(user, &uid, &gid) < 0) {
        snprintf(why, whylen, "invalid user %s", user);
        return -1;
    }
    for (int cap = 0; cap < 64; cap++) {
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
            if (errno == EINVAL)
                break;
            snprintf(why, whylen, "cannot drop capabilities: %s", reason_for(errno));
            return -1;
        }
    }
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
    if (user) {
        /* A namespace mapped by an unprivileged caller denies setgroups. */
        if (setgroups(0, NULL) < 0 && !(errno == EPERM && g_userns == 1)) {
            snprintf(why, whylen, "cannot switch to user %s: %s", user, reason_for(errno));
            return -1;
        }
        if (setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0) {
            snprintf(why, whylen, "cannot switch to user %s: %s", user, reason_for(errno));
            return -1;
        }
    }
    memset(data, 0, sizeof data);
    if (syscall(SYS_capset, &header, data) < 0) {
        snprintf(why, whylen, "cannot drop capabilities: %s", reason_for(errno));
        return -1;
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) {
        snprintf(why, whylen, "cannot set no_new_privs: %s", reason_for(errno));
        return -1;
    }
    return 0;
}

static void __attribute__((noreturn)) command_child(int exec_w)
{
    sigset_t none;
    char why[256];

    setsid();
    ioctl(g_slave, TIOCSCTTY, 0);
    dup2(g_slave, 0);
    dup2(g_slave, 1);
    dup2(g_slave, 2);
    if (g_slave > 2)
        close(g_slave);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    if (drop_privileges(g_user, why, sizeof why) < 0) {
        init_report(exec_w, "%s", why);
        _exit(127);
    }
    if (chdir(g_workdir ? g_workdir : "/") < 0) {
        init_report(exec_w, "cannot enter workdir %s: %s", g_workdir, strerror(errno));
        _exit(127);
    }
    execvp(g_argv[0], g_argv);
    init_report(exec_w, "cannot run %s: %s", g_argv[0], strerror(errno));
    _exit(127);
}

/* A failed setup: the caller hears it directly from the init. */
static void __attribute__((noreturn)) init_fail(const char *fmt, ...)
{
    char reason[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    for (char *p = reason; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    ready_msg("err %s\n", reason);
    log_line("start failed: %s", reason);
    _exit(127);
}

/* One byte from the supervisor on the setup channel. */
static void wait_byte(int fd, char expected)
{
    char c = 0;
    ssize_t n;

    do {
        n = read(fd, &c, 1);
    } while (n < 0 && errno == EINTR);
    if (n != 1 || c != expected)
        init_fail("the supervisor ended during setup");
}

/* ------------------------------------------------------------- sprite root */

/* Remount a bind mount with nosuid and nodev (and read-only when asked),
 * keeping the flags a user namespace locks. */
static int remount_bind(const char *path, int readonly)
{
    struct statvfs sv;
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV;

    if (statvfs(path, &sv) == 0) {
        if (sv.f_flag & ST_NOEXEC)
            flags |= MS_NOEXEC;
        if (sv.f_flag & ST_NOATIME)
            flags |= MS_NOATIME;
        if (sv.f_flag & ST_NODIRATIME)
            flags |= MS_NODIRATIME;
        if (sv.f_flag & ST_RELATIME)
            flags |= MS_RELATIME;
        if (sv.f_flag & ST_RDONLY)
            flags |= MS_RDONLY;
    }
    if (readonly)
        flags |= MS_RDONLY;
    return mount(NULL, path, NULL, flags, NULL);
}

static void make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) < 0 && errno != EEXIST)
        init_fail("cannot create /%s in the sprite: %s", path, strerror(errno));
}

static void make_file(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0)
        init_fail("cannot create /%s in the sprite: %s", path, strerror(errno));
    close(fd);
}

/* Bind src (a host path, or /proc/self/fd/N) on dst inside the new root. */
static void bind_path(const char *src, const char *dst, int is_dir, int readonly)
{
    if (is_dir)
        make_dir(dst, 0755);
    else
        make_file(dst);
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0 || remount_bind(dst, readonly) < 0)
        init_fail("cannot mount %s on /%s: %s", src, dst, reason_for(errno));
}

static void write_file(const char *path, const char *content, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        init_fail("cannot write /%s in the sprite: %s", path, strerror(errno));
    write_all(fd, content, strlen(content));
    fchmod(fd, mode);
    close(fd);
}

static void make_device(const char *name, unsigned int major_no, unsigned int minor_no)
{
    char dst[64], src[64];

    snprintf(dst, sizeof dst, "dev/%s", name);
    if (mknod(dst, S_IFCHR | 0666, makedev(major_no, minor_no)) == 0) {
        chmod(dst, 0666);
        return;
    }
    if (errno != EPERM)
        init_fail("cannot create /%s in the sprite: %s", dst, strerror(errno));
    /* No mknod in a user namespace: bind the host's node instead. */
    snprintf(src, sizeof src, "/dev/%s", name);
    make_file(dst);
    if (mount(src, dst, NULL, MS_BIND, NULL) < 0)
        init_fail("cannot mount %s in the sprite: %s", src, reason_for(errno));
}

/* A --mount source, opened by its resolved path with no symlink on the way. */
static int open_source(const char *path)
{
#ifdef SYS_openat2
    struct {
        uint64_t flags, mode, resolve;
    } how = {O_PATH | O_CLOEXEC, 0, 0x04 /* RESOLVE_NO_SYMLINKS */ | 0x02 /* NO_MAGICLINKS */};
    int fd = (int)syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof how);
    if (fd >= 0 || errno != ENOSYS)
        return fd;
#endif
    return open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
}

/* Create the mount point of a --mount target inside the new root, refusing
 * to go through a symlink (one left in a kept /work, say). */
static void make_mountpoint(const char *target, int is_dir)
{
    char path[PATH_MAX];
    struct stat st;
    size_t len = strlen(target);

    if (len == 0 || len >= sizeof path || target[0] != '/')
        init_fail("invalid mount target %s", target);
    memcpy(path, target, len + 1);
    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char saved = *p;
        int last = saved == '\0';
        *p = '\0';
        if (lstat(path, &st) == 0) {
            if (S_ISLNK(st.st_mode))
                init_fail("mount target %s goes through a symlink (%s)", target, path);
            if (!last && !S_ISDIR(st.st_mode))
                init_fail("mount target %s: %s is not a directory", target, path);
            if (last && is_dir != !!S_ISDIR(st.st_mode))
                init_fail("mount target %s: %s is %s", target, path,
                          is_dir ? "not a directory" : "a directory");
        } else if (!last || is_dir) {
            if (mkdir(path, 0755) < 0 && errno != EEXIST)
                init_fail("cannot create mount target %s: %s", path, strerror(errno));
        } else {
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
            if (fd < 0)
                init_fail("cannot create mount target %s: %s", path, strerror(errno));
            close(fd);
        }
        if (last)
            break;
        *p = saved;
    }
}

static const char ETC_PASSWD[] =
    "root:x:0:0:root:/root:/bin/sh\n"
    "sprite:x:1000:1000:sprite:/home/sprite:/bin/sh\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
static const char ETC_GROUP[] = "root:x:0:\ntty:x:5:\nsprite:x:1000:\nnogroup:x:65534:\n";
static const char ETC_NSSWITCH[] = "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n";

/* The sprite's own root: a small tmpfs with the host's /usr read-only (and
 * /bin, /lib... as the host has them: symlinks into /usr or read-only binds),
 * a generated /etc, a fresh /proc, a minimal /dev with a new devpts
 * instance, and /tmp, /work and /home/sprite bound from --files; then the
 * --mount binds, and the root itself turns read-only. The old root is
 * detached: nothing else of the host stays reachable. */
static void setup_root(void)
{
    static const char *const top[] = {"bin", "sbin", "lib", "lib32", "lib64", "libx32"};
    char path[PATH_MAX], text[8192];
    char resolv[4096];
    ssize_t resolv_len = -1;
    struct stat st;

    umask(022);
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
        init_fail("cannot make / a slave mount: %s", reason_for(errno));
    for (int i = 0; i < g_nmounts; i++) {
        g_mount_fds[i] = open_source(g_mount_src[i]);
        if (g_mount_fds[i] < 0)
            init_fail("cannot open mount source %s: %s", g_mount_src[i], strerror(errno));
    }
    if (!g_netns) {
        int fd = open("/etc/resolv.conf", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            resolv_len = read(fd, resolv, sizeof resolv - 1);
            close(fd);
        }
    }
    if (mount("tmpfs", g_root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m,nr_inodes=1024") <
            0 ||
        chdir(g_root) < 0)
        init_fail("cannot make the sprite's root: %s", reason_for(errno));

    bind_path("/usr", "usr", 1, 1);
    for (size_t i = 0; i < sizeof top / sizeof top[0]; i++) {
        snprintf(path, sizeof path, "/%s", top[i]);
        if (lstat(path, &st) < 0)
            continue;
        if (S_ISLNK(st.st_mode)) {
            ssize_t n = readlink(path, text, sizeof text - 1);
            if (n <= 0)
                continue;
            text[n] = '\0';
            if (symlink(text, top[i]) < 0)
                init_fail("cannot create /%s in the sprite: %s", top[i], strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            bind_path(path, top[i], 1, 1);
        }
    }

    make_dir("etc", 0755);
    snprintf(text, sizeof text, "%s\n", g_name);
    write_file("etc/hostname", text, 0644);
    snprintf(text, sizeof text,
             "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n",
             g_name);
    write_file("etc/hosts", text, 0644);
    write_file("etc/passwd", ETC_PASSWD, 0644);
    write_file("etc/group", ETC_GROUP, 0644);
    write_file("etc/nsswitch.conf", ETC_NSSWITCH, 0644);
    if (resolv_len > 0) {
        resolv[resolv_len] = '\0';
        write_file("etc/resolv.conf", resolv, 0644);
    }

    make_dir("root", 0700);
    make_dir("home", 0755);
    make_dir("var", 0755);
    if (symlink("../tmp", "var/tmp") < 0)
        init_fail("cannot create /var/tmp in the sprite: %s", strerror(errno));
    if (g_files) {
        static const char *const own[][2] = {{"tmp", "tmp"}, {"work", "work"}, {"home", "home/sprite"}};
        for (size_t i = 0; i < sizeof own / sizeof own[0]; i++) {
            snprintf(path, sizeof path, "%s/%s", g_files, own[i][0]);
            bind_path(path, own[i][1], 1, 0);
        }
    } else {
        make_dir("tmp", 01777);
        chmod("tmp", 01777);
    }

    make_dir("dev", 0755);
    if (mount("tmpfs", "dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k,nr_inodes=64") < 0)
        init_fail("cannot mount /dev in the sprite: %s", reason_for(errno));
    make_device("null", 1, 3);
    make_device("zero", 1, 5);
    make_device("full", 1, 7);
    make_device("random", 1, 8);
    make_device("urandom", 1, 9);
    make_device("tty", 5, 0);
    make_dir("dev/pts", 0755);
    if (mount("devpts", "dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620") < 0)
        init_fail("cannot mount /dev/pts in the sprite: %s", reason_for(errno));
    make_dir("dev/shm", 01777);
    if (mount("tmpfs", "dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0)
        init_fail("cannot mount /dev/shm in the sprite: %s", reason_for(errno));
    if (symlink("pts/ptmx", "dev/ptmx") < 0 || symlink("/proc/self/fd", "dev/fd") < 0 ||
        symlink("/proc/self/fd/0", "dev/stdin") < 0 || symlink("/proc/self/fd/1", "dev/stdout") < 0 ||
        symlink("/proc/self/fd/2", "dev/stderr") < 0)
        init_fail("cannot populate /dev in the sprite: %s", strerror(errno));
    /* The console is the sprite's pty, as /dev/console. */
    make_file("dev/console");
    if (mount(g_pts, "dev/console", NULL, MS_BIND, NULL) < 0)
        unlink("dev/console");

    make_dir("proc", 0555);
    if (mount("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
        init_fail("cannot mount /proc: %s", reason_for(errno));
    if (!g_userns) {
        /* Without a user namespace root inside is root on the host, though
         * without capabilities: keep it away from the kernel's knobs. */
        static const char *const knobs[] = {"proc/sys", "proc/sysrq-trigger", "proc/irq",
                                            "proc/bus", "proc/fs"};
        for (size_t i = 0; i < sizeof knobs / sizeof knobs[0]; i++) {
            if (lstat(knobs[i], &st) < 0)
                continue;
            if (mount(knobs[i], knobs[i], NULL, MS_BIND | MS_REC, NULL) < 0 ||
                remount_bind(knobs[i], 1) < 0)
                init_fail("cannot protect /%s: %s", knobs[i], reason_for(errno));
        }
    }

    /* The --mount sources are bound now, while the host's tree they are in
     * is still ours, at staging points; they move to their targets once the
     * targets resolve inside the new root. */
    if (g_nmounts > 0)
        make_dir(".mounts", 0700);
    for (int i = 0; i < g_nmounts; i++) {
        char stage[64], source[64];
        if (fstat(g_mount_fds[i], &st) < 0)
            init_fail("cannot use mount source %s: %s", g_mount_src[i], strerror(errno));
        g_mount_dirs[i] = S_ISDIR(st.st_mode);
        snprintf(stage, sizeof stage, ".mounts/%d", i);
        snprintf(source, sizeof source, "/proc/self/fd/%d", g_mount_fds[i]);
        if (g_mount_dirs[i])
            make_dir(stage, 0700);
        else
            make_file(stage);
        if (mount(source, stage, NULL, MS_BIND, NULL) < 0 || remount_bind(stage, !g_mount_rw[i]) < 0)
            init_fail("cannot mount %s: %s", g_mount_src[i], reason_for(errno));
        close(g_mount_fds[i]);
    }

    if (syscall(SYS_pivot_root, ".", ".") < 0)
        init_fail("cannot enter the sprite's root: %s", reason_for(errno));
    if (umount2(".", MNT_DETACH) < 0 || chdir("/") < 0)
        init_fail("cannot detach the host's root: %s", reason_for(errno));

    for (int i = 0; i < g_nmounts; i++) {
        make_mountpoint(g_mount_dst[i], g_mount_dirs[i]);
        snprintf(path, sizeof path, "/.mounts/%d", i);
        if (mount(path, g_mount_dst[i], NULL, MS_MOVE, NULL) < 0)
            init_fail("cannot mount %s on %s: %s", g_mount_src[i], g_mount_dst[i],
                      reason_for(errno));
        if (g_mount_dirs[i] ? rmdir(path) : unlink(path))
            init_fail("cannot tidy the sprite's root: %s", strerror(errno));
    }
    if (g_nmounts > 0 && rmdir("/.mounts") < 0)
        init_fail("cannot tidy the sprite's root: %s", strerror(errno));
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
        init_fail("cannot make the sprite's root read-only: %s", reason_for(errno));
}

/* No user namespaces inside the sprite: a new one would hand back every
 * capability this one gave up. The limit is per namespace and only ours. */
static void forbid_nested_userns(void)
{
    int fd = open("/proc/sys/user/max_user_namespaces", O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "0", 1) != 1)
        init_fail("cannot forbid nested user namespaces: %s", reason_for(errno));
    close(fd);
}

/* ----------------------------------------------------------- exec service */

/* Commands exec'd into the sprite are forked by its init, which is already
 * in every namespace, cgroup and the root of the sprite: nothing has to
 * join them (moving a process between cgroups waits for an RCU grace period
 * per hierarchy). A request is one SOCK_SEQPACKET message on exec.sock in
 * the sprite's record directory (reachable from the host only): strings
 * "u:<uid:gid>", "w:<workdir>", "e:<KEY=VALUE>"..., "a:<arg>"..., NUL
 * terminated, with the command's stdin, stdout and stderr as SCM_RIGHTS.
 * The init answers "run" or "err <reason>", then "exit <code>" or
 * "signal <n>" when the command ends; "s<n>" from the caller signals the
 * command, and a caller that goes away takes its command with it. */

#define EXEC_MSG_MAX (256 * 1024)
#define MAX_EXECS 64

struct exec_client {
    int conn;
    pid_t pid;
};

static struct exec_client g_execs[MAX_EXECS];
static int g_nexecs;
static int g_exec_listen = -1;

static void exec_reply(int conn, const char *fmt, ...)
{
    char buf[600];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if (n >= (int)sizeof buf)
        n = (int)sizeof buf - 1;
    send(conn, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void __attribute__((noreturn))
exec_child(int report, int fds[3], const char *user, const char *workdir, char **env, int nenv,
           char **args)
{
    sigset_t none;
    char why[256];

    for (int i = 0; i < 3; i++) {
        if (dup2(fds[i], i) < 0) {
            init_report(report, "cannot pass the command's stdio: %s", strerror(errno));
            _exit(127);
        }
    }
    for (int i = 0; i < 3; i++)
        if (fds[i] > 2)
            close(fds[i]);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setsid();
    if (drop_privileges(user && *user ? user : g_user, why, sizeof why) < 0) {
        init_report(report, "%s", why);
        _exit(127);
    }
    if (chdir(workdir && *workdir ? workdir : (g_workdir ? g_workdir : "/")) < 0) {
        init_report(report, "cannot enter workdir %s: %s", workdir && *workdir ? workdir : g_workdir,
                    strerror(errno));
        _exit(127);
    }
    for (int i = 0; i < nenv; i++) {
        char *eq = strchr(env[i], '=');
        if (!eq || eq == env[i])
            continue;
        *eq = '\0';
        setenv(env[i], eq + 1, 1);
        *eq = '=';
    }
    execvp(args[0], args);
    init_report(report, "cannot run %s: %s", args[0], strerror(errno));
    _exit(127);
}

/* One request on a new connection: run the command, or say why not. */
static void exec_request(int conn)
{
    static char buf[EXEC_MSG_MAX + 1];
    static char *args[EXEC_MSG_MAX / 4], *env[EXEC_MSG_MAX / 4];
    char control[CMSG_SPACE(3 * sizeof(int))];
    struct iovec iov = {buf, EXEC_MSG_MAX};
    struct msghdr msg;
    struct cmsghdr *cmsg;
    int fds[3] = {-1, -1, -1}, nfds = 0, nargs = 0, nenv = 0, report[2];
    const char *user = NULL, *workdir = NULL;
    ssize_t n;
    pid_t pid;

    memset(&msg, 0, sizeof msg);
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    do {
        n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
            int count = (int)((cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < count; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof fd);
                if (nfds < 3)
                    fds[nfds++] = fd;
                else
                    close(fd);
            }
        }
    }
    if (n <= 0 || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || nfds != 3) {
        exec_reply(conn, "err invalid exec request");
        goto refused;
    }
    buf[n] = '\0';
    for (char *p = buf; p < buf + n; p += strlen(p) + 1) {
        if (strncmp(p, "a:", 2) == 0)
            args[nargs++] = p + 2;
        else if (strncmp(p, "e:", 2) == 0)
            env[nenv++] = p + 2;
        else if (strncmp(p, "u:", 2) == 0)
            user = p + 2;
        else if (strncmp(p, "w:", 2) == 0)
            workdir = p + 2;
    }
    args[nargs] = NULL;
    if (nargs == 0) {
        exec_reply(conn, "err exec needs a command");
        goto refused;
    }
    if (g_nexecs >= MAX_EXECS) {
        exec_reply(conn, "err too many commands running in the sprite");
        goto refused;
    }
    if (pipe2(report, O_CLOEXEC) < 0) {
        exec_reply(conn, "err pipe: %s", strerror(errno));
        goto refused;
    }
    pid = fork();
    if (pid < 0) {
        exec_reply(conn, "err cannot start the command: %s", strerror(errno));
        close(report[0]);
        close(report[1]);
        goto refused;
    }
    if (pid == 0) {
        close(report[0]);
        exec_child(report[1], fds, user, workdir, env, nenv, args);
    }
    close(report[1]);
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    do {
        n = read(report[0], buf, 512);
    } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n > 0) {
        buf[n] = '\0';
        exec_reply(conn, "err %s", buf);
        close(conn);
        return; /* the child exits 127 and is reaped like any other */
    }
    exec_reply(conn, "run");
    g_execs[g_nexecs].conn = conn;
    g_execs[g_nexecs++].pid = pid;
    return;
refused:
    for (int i = 0; i < nfds; i++)
        close(fds[i]);
    close(conn);
}

/* A message from a caller: a signal for its command, or its going away. */
static void exec_message(int i)
{
    char buf[32];
    ssize_t n = recv(g_execs[i].conn, buf, sizeof buf - 1, MSG_DONTWAIT);

    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n > 1 && buf[0] == 's') {
        buf[n] = '\0';
        int sig = atoi(buf + 1);
        if (sig > 0 && sig < 65)
            kill(g_execs[i].pid, sig);
        return;
    }
    /* The caller is gone (or spoke nonsense): so is its command. */
    kill(g_execs[i].pid, SIGKILL);
    close(g_execs[i].conn);
    g_execs[i].conn = -1;
}

/* A reaped process: if it was an exec'd command, tell its caller. */
static void exec_ended(pid_t pid, int status)
{
    for (int i = 0; i < g_nexecs; i++) {
        if (g_execs[i].pid != pid)
            continue;
        if (g_execs[i].conn >= 0) {
            if (WIFSIGNALED(status))
                exec_reply(g_execs[i].conn, "signal %d", WTERMSIG(status));
            else
                exec_reply(g_execs[i].conn, "exit %d", WEXITSTATUS(status));
            close(g_execs[i].conn);
        }
        g_execs[i] = g_execs[--g_nexecs];
        return;
    }
}

static void __attribute__((noreturn)) run_init(int go)
{
    sigset_t set;
    int exec_pipe[2];
    pid_t main_pid;
    char buf[512];
    ssize_t n;
    int main_status = 0, main_done = 0, terminating = 0, no_children = 0;

    /* The init holds only what it needs: the console slave, the record
     * directory, the log, the caller's ready pipe and the setup channel. */
    close(g_master);
    close(g_listen);
    close(g_sigfd);
    close(g_lock_fd);
    munmap(g_ring, RING_HEADER + RING_SIZE);

    if (g_userns == 1)
        wait_byte(go, 'g');
    for (int i = 0; i < g_ncgroups; i++) {
        if (write(g_cgroup_fds[i], "0", 1) != 1)
            init_fail("cannot join cgroup %s: %s", g_cgroups[i], reason_for(errno));
        close(g_cgroup_fds[i]);
    }
    if (g_root) {
        setup_root();
    } else {
        if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0)
            init_fail("cannot make / a slave mount: %s", reason_for(errno));
        if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            init_fail("cannot mount /proc: %s", reason_for(errno));
    }
    if (sethostname(g_name, strlen(g_name)) < 0)
        init_fail("cannot set the hostname: %s", reason_for(errno));
    if (g_netns)
        loopback_up();
    if (g_userns == 2) {
        /* Last, so every namespace and mount above stays the host's to own:
         * nothing inside can change them, whatever its ids. */
        if (unshare(CLONE_NEWUSER) < 0)
            init_fail("cannot create the sprite's user namespace: %s", reason_for(errno));
        wait_byte(go, 'g');
        write_all(go, "u", 1);
        wait_byte(go, 'm');
    }
    if (g_userns)
        forbid_nested_userns();

    if (pipe2(exec_pipe, O_CLOEXEC) < 0)
        init_fail("pipe: %s", strerror(errno));
    main_pid = fork();
    if (main_pid < 0)
        init_fail("fork: %s", strerror(errno));
    if (main_pid == 0) {
        close(exec_pipe[0]);
        command_child(exec_pipe[1]);
    }
    close(exec_pipe[1]);
    close(g_slave);
    do {
        n = read(exec_pipe[0], buf, sizeof buf - 1);
    } while (n < 0 && errno == EINTR);
    close(exec_pipe[0]);
    if (n > 0) {
        buf[n] = '\0';
        init_fail("%s", buf);
    }
    if (g_userns == 0)
        wait_byte(go, 'g');
    close(go);
    ready_msg("ok\n");
    close(g_ready);
    g_ready = -1;
    close(g_log);
    g_log = -1;

    /* The signals stay blocked (inherited from the supervisor): a namespace
     * init ignores unhandled signals, but blocked ones reach its signalfd. */
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    for (;;) {
        struct pollfd pfd[2 + MAX_EXECS];
        int n_poll = 0, first_exec, signalled = 0, chld = 0;

        pfd[n_poll].fd = sfd;
        pfd[n_poll++].events = POLLIN;
        pfd[n_poll].fd = terminating ? -1 : g_exec_listen;
        pfd[n_poll++].events = POLLIN;
        first_exec = n_poll;
        for (int i = 0; i < g_nexecs; i++) {
            pfd[n_poll].fd = g_execs[i].conn;
            pfd[n_poll++].events = POLLIN;
        }
        if (poll(pfd, (nfds_t)n_poll, sfd < 0 ? 200 : -1) < 0 && errno != EINTR)
            break;
        if (sfd < 0) {
            chld = 1;
        } else if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGCHLD)
                    chld = 1;
                else
                    signalled = 1;
            }
        }
        for (int i = g_nexecs - 1; i >= 0; i--)
            if (first_exec + i < n_poll && pfd[first_exec + i].revents && g_execs[i].conn >= 0 &&
                g_execs[i].conn == pfd[first_exec + i].fd)
                exec_message(i);
        if (pfd[1].fd >= 0 && (pfd[1].revents & POLLIN)) {
            int conn = accept4(g_exec_listen, NULL, NULL, SOCK_CLOEXEC);
            if (conn >= 0)
                exec_request(conn);
        }
        if (signalled && !terminating) {
            terminating = 1;
            kill(-1, SIGTERM);
            /* Interactive shells ignore SIGTERM; a console hangup ends them. */
            if (!main_done)
                kill(-main_pid, SIGHUP);
            kill(-1, SIGCONT);
        }
        if (!chld && !signalled)
            continue;
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p > 0) {
                if (p == main_pid) {
                    main_status = st;
                    main_done = 1;
                } else {
                    exec_ended(p, st);
                }
                continue;
            }
            no_children = p < 0 && errno == ECHILD;
            break;
        }
        if (main_done && (!terminating || no_children))
            break;
        if (terminating && no_children)
            break;
    }

    if (WIFSIGNALED(main_status))
        snprintf(buf, sizeof buf, "signal=%d\n", WTERMSIG(main_status));
    else
        snprintf(buf, sizeof buf, "code=%d\n", WEXITSTATUS(main_status));
    write_record("exit", ".exit-init", buf, 1);
    if (WIFSIGNALED(main_status))
        _exit(128 + WTERMSIG(main_status));
    _exit(WEXITSTATUS(main_status));
}

/* --------------------------------------------------------------- supervisor */

/* The sprite's ids on the host: with --userns 1 root inside is the caller
 * (who may map nothing else), with --userns 2 ids 0-65535 inside are
 * --uid-base and up. -1 with errno on failure. */
static int write_maps(pid_t pid)
{
    char path[64], line[96];
    int fd;
    unsigned long host_uid = g_uid_base, host_gid = g_uid_base, count = USERNS_RANGE;

    if (g_userns == 1) {
        snprintf(path, sizeof path, "/proc/%d/setgroups", (int)pid);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
            write_all(fd, "deny", 4);
            close(fd);
        }
        host_uid = (unsigned long)getuid();
        host_gid = (unsigned long)getgid();
        count = 1;
    }
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, i == 0 ? "uid_map" : "gid_map");
        snprintf(line, sizeof line, "0 %lu %lu\n", i == 0 ? host_uid : host_gid, count);
        fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
            return -1;
        if (write(fd, line, strlen(line)) < 0) {
            int err = errno;
            close(fd);
            errno = err;
            return -1;
        }
        close(fd);
    }
    return 0;
}

static void describe_end(pid_t init_pid, int init_status)
{
    char buf[128];
    ssize_t n = -1;
    int fd = openat(g_dirfd, "exit", O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    if (fd >= 0) {
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
    }
    if (n > 0) {
        buf[n] = '\0';
        if (strncmp(buf, "code=", 5) == 0)
            log_line("command exited with code %d", atoi(buf + 5));
        else if (strncmp(buf, "signal=", 7) == 0)
            log_line("command was killed by signal %d (%s)", atoi(buf + 7),
                     strsignal(atoi(buf + 7)));
    } else {
        if (WIFSIGNALED(init_status))
            snprintf(buf, sizeof buf, "init_signal=%d\n", WTERMSIG(init_status));
        else
            snprintf(buf, sizeof buf, "init_code=%d\n", WEXITSTATUS(init_status));
        write_record("exit", ".exit-supervisor", buf, 1);
        if (WIFSIGNALED(init_status))
            log_line("init (pid %d) was killed by signal %d (%s)", (int)init_pid,
                     WTERMSIG(init_status), strsignal(WTERMSIG(init_status)));
        else
            log_line("init (pid %d) exited with code %d", (int)init_pid, WEXITSTATUS(init_status));
    }
    if (read_oom_kills() > 0)
        log_line("killed by the kernel: out of memory (limit %s)",
                 g_limit_text ? g_limit_text : "unknown");
}

static void __attribute__((noreturn)) supervise(void)
{
    sigset_t set;
    int go_pipe[2];
    unsigned long flags;
    pid_t init_pid;
    int init_status = 0;

    setsid();
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    g_sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (g_sigfd < 0)
        fail("signalfd: %s", strerror(errno));
    /* The setup channel: the supervisor's go, and in a late user namespace
     * the init's request for its id maps. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, go_pipe) < 0)
        fail("socketpair: %s", strerror(errno));

    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;
    if (g_netns)
        flags |= CLONE_NEWNET;
    if (g_userns == 1)
        flags |= CLONE_NEWUSER;
    /* fork-like clone: no new stack, so the child runs on a copy of ours. */
    init_pid = (pid_t)syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, 0UL);
    if (init_pid < 0)
        fail("cannot create the sprite's namespaces: %s", reason_for(errno));
    if (init_pid == 0) {
        close(go_pipe[1]);
        run_init(go_pipe[0]);
    }
    close(go_pipe[0]);
    close(g_slave);
    close(g_exec_listen);
    for (int i = 0; i < g_ncgroups; i++)
        close(g_cgroup_fds[i]);
    if (g_userns == 1 && write_maps(init_pid) < 0) {
        int err = errno;
        kill(init_pid, SIGKILL);
        waitpid(init_pid, NULL, 0);
        unlink_socket();
        fail("cannot map the sprite's user: %s", reason_for(err));
    }

    /* Record the sprite while the init sets itself up; the init reports
     * "ok" to the caller only after this go, so a running sprite always has
     * its pids on record. */
    {
        char rec[512];
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        snprintf(rec, sizeof rec,
                 "supervisor_pid=%d\nsupervisor_start=%llu\ninit_pid=%d\ninit_start=%llu\n"
                 "started_at=%lld.%06ld\npts=%s\nuserns=%d\n",
                 (int)getpid(), proc_start(getpid()), (int)init_pid, proc_start(init_pid),
                 (long long)ts.tv_sec, ts.tv_nsec / 1000, g_pts, g_userns);
        if (write_record("pids", ".pids", rec, 0) < 0) {
            int err = errno;
            kill(init_pid, SIGKILL);
            waitpid(init_pid, NULL, 0);
            unlink_socket();
            fail("cannot record the sprite: %s", strerror(err));
        }
    }
    write_all(go_pipe[1], "g", 1);
    if (g_userns == 2) {
        char c = 0;
        ssize_t got;
        do {
            got = read(go_pipe[1], &c, 1);
        } while (got < 0 && errno == EINTR);
        /* Nothing read: the init failed its setup and said so itself. */
        if (got == 1 && c == 'u') {
            if (write_maps(init_pid) < 0) {
                int err = errno;
                kill(init_pid, SIGKILL);
                waitpid(init_pid, NULL, 0);
                unlink_socket();
                fail("cannot map the sprite's user: %s", reason_for(err));
            }
            write_all(go_pipe[1], "m", 1);
        }
    }
    close(go_pipe[1]);
    /* The caller keeps the record locked until it hears from the init. */
    close(g_lock_fd);
    close(g_ready);
    g_ready = -1;
    {
        char cmd[256];
        size_t used = 0;
        for (char **a = g_argv; *a && used < sizeof cmd - 1; a++) {
            int w = snprintf(cmd + used, sizeof cmd - used, "%s%s", used ? " " : "", *a);
            if (w < 0)
                break;
            used += (size_t)w;
        }
        if (used >= sizeof cmd)
            used = sizeof cmd - 1;
        cmd[used] = '\0';
        for (char *p = cmd; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
        log_line("started sprite %s (id %s): init pid %d, supervisor pid %d, console %s, command: %s",
                 g_name, g_id, (int)init_pid, (int)getpid(), g_pts, cmd);
    }

    for (;;) {
        struct pollfd pfd[3 + MAX_CLIENTS];
        int client_fds[MAX_CLIENTS];
        int n = 0, mi = -1, li, ci, nc = g_nclients, init_done = 0;

        pfd[n].fd = g_sigfd;
        pfd[n++].events = POLLIN;
        if (g_master_open) {
            mi = n;
            pfd[n].fd = g_master;
            pfd[n++].events = POLLIN;
        }
        li = n;
        pfd[n].fd = g_listen;
        pfd[n++].events = POLLIN;
        ci = n;
        for (int i = 0; i < nc; i++) {
            client_fds[i] = g_clients[i];
            pfd[n].fd = g_clients[i];
            pfd[n++].events = POLLIN;
        }
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (mi >= 0 && pfd[mi].revents)
            pump_master(0);
        for (int i = 0; i < nc; i++) {
            if (!pfd[ci + i].revents)
                continue;
            for (int j = 0; j < g_nclients; j++) {
                if (g_clients[j] == client_fds[i]) {
                    client_input(j);
                    break;
                }
            }
        }
        if (pfd[li].revents & POLLIN)
            accept_client();
        if (pfd[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(g_sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    int st;
                    pid_t p;
                    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
                        if (p == init_pid) {
                            init_status = st;
                            init_done = 1;
                        }
                    }
                } else {
                    log_line("supervisor received signal %u: stopping the sprite", si.ssi_signo);
                    kill(init_pid, SIGTERM);
                }
            }
        }
        if (init_done)
            break;
    }

    pump_master(1);
    describe_end(init_pid, init_status);
    log_line("sprite %s ended", g_name);
    while (g_nclients > 0)
        drop_client(g_nclients - 1, "sprite ended");
    close(g_listen);
    unlink_socket();
    _exit(0);
}

/* -------------------------------------------------------------------- start */

static void prepare_console(void)
{
    int fd;
    void *map;
    struct winsize ws = {24, 80, 0, 0};
    struct sockaddr_un addr;
    int sdfd;
    mode_t old;

    fd = openat(g_dirfd, "console", O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0)
        fail("cannot create the console record: %s", strerror(errno));
    if (ftruncate(fd, RING_HEADER + RING_SIZE) < 0)
        fail("cannot size the console record: %s", strerror(errno));
    map = mmap(NULL, RING_HEADER + RING_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        fail("cannot map the console record: %s", strerror(errno));
    g_ring = map;
    g_ring_data = (char *)map + RING_HEADER;
    memcpy(g_ring->magic, "SPRC", 4);
    g_ring->size = RING_SIZE;
    g_ring->total = 0;

    g_master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (g_master < 0 || grantpt(g_master) < 0 || unlockpt(g_master) < 0 ||
        ptsname_r(g_master, g_pts, sizeof g_pts) != 0)
        fail("cannot open a console pty: %s", strerror(errno));
    ioctl(g_master, TIOCSWINSZ, &ws);
    g_slave = ioctl(g_master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (g_slave < 0)
        g_slave = open(g_pts, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (g_slave < 0)
        fail("cannot open the console pty: %s", strerror(errno));
    /* The console belongs to the sprite's user, as a login's terminal does. */
    {
        uid_t uid;
        gid_t gid;
        if (g_user && g_userns != 1 && parse_user(g_user, &uid, &gid) == 0) {
            unsigned long base = g_userns == 2 ? g_uid_base : 0;
            if (fchown(g_slave, (uid_t)(base + uid), (gid_t)-1) == 0)
                fchmod(g_slave, 0620);
        }
    }
    fcntl(g_master, F_SETFL, fcntl(g_master, F_GETFL) | O_NONBLOCK);

    g_listen = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (g_listen < 0)
        fail("socket: %s", strerror(errno));
    if (socket_address(g_socket, &addr, &sdfd) < 0)
        fail("cannot use console socket path %s", g_socket);
    old = umask(0177);
    if (bind(g_listen, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int err = errno;
        umask(old);
        fail("cannot bind console socket %s: %s", g_socket, strerror(err));
    }
    umask(old);
    if (sdfd >= 0)
        close(sdfd);
    if (listen(g_listen, 16) < 0)
        fail("listen: %s", strerror(errno));

    /* The init's exec service (see exec_request), reachable from the host only. */
    g_exec_listen = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (g_exec_listen < 0)
        fail("socket: %s", strerror(errno));
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/exec.sock", g_dirfd);
    old = umask(0177);
    if (bind(g_exec_listen, (struct sockaddr *)&addr, sizeof addr) < 0) {
        int err = errno;
        umask(old);
        fail("cannot bind the exec socket: %s", strerror(err));
    }
    umask(old);
    if (listen(g_exec_listen, 16) < 0)
        fail("listen: %s", strerror(errno));
}

static int parse_userns(const char *v)
{
    if (strcmp(v, "1") == 0 || strcmp(v, "2") == 0)
        return v[0] - '0';
    return 0;
}

/* The options start and exec share; 1 when a was one of them. */
static int common_option(const char *a, const char *v)
{
    if (strcmp(a, "--cgroup") == 0 && g_ncgroups < MAX_CGROUPS)
        g_cgroups[g_ncgroups++] = v;
    else if (strcmp(a, "--workdir") == 0)
        g_workdir = v;
    else if (strcmp(a, "--user") == 0)
        g_user = v;
    else if (strcmp(a, "--userns") == 0)
        g_userns = parse_userns(v);
    else if (strcmp(a, "--network") == 0)
        g_netns = strcmp(v, "host") != 0;
    else if (strcmp(a, "--name") == 0)
        g_name = v;
    else
        return 0;
    return 1;
}

static int parse_fd(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < 0 || v > INT_MAX)
        return -1;
    return (int)v;
}

static int cmd_start(int argc, char **argv)
{
    static char *default_argv[] = {"/bin/sh", NULL};
    int i;

    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "sprite-helper: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (common_option(a, v))
            continue;
        if (strcmp(a, "--id") == 0)
            g_id = v;
        else if (strcmp(a, "--socket") == 0)
            g_socket = v;
        else if (strcmp(a, "--lock-fd") == 0)
            g_lock_fd = parse_fd(v);
        else if (strcmp(a, "--ready-fd") == 0)
            g_ready = parse_fd(v);
        else if (strcmp(a, "--oom-file") == 0)
            g_oom_file = v;
        else if (strcmp(a, "--limit-text") == 0)
            g_limit_text = v;
        else if (strcmp(a, "--root") == 0)
            g_root = v;
        else if (strcmp(a, "--files") == 0)
            g_files = v;
        else if (strcmp(a, "--uid-base") == 0)
            g_uid_base = strtoul(v, NULL, 10);
        else if (strcmp(a, "--mount-source") == 0 && g_nmounts < MAX_MOUNTS) {
            g_mount_src[g_nmounts] = v;
            g_mount_dst[g_nmounts] = NULL;
            g_mount_rw[g_nmounts++] = 0;
        } else if (strcmp(a, "--mount-target") == 0 && g_nmounts > 0)
            g_mount_dst[g_nmounts - 1] = v;
        else if (strcmp(a, "--mount-rw") == 0 && g_nmounts > 0)
            g_mount_rw[g_nmounts - 1] = strcmp(v, "1") == 0;
        else {
            fprintf(stderr, "sprite-helper: unknown option %s\n", a);
            return 2;
        }
    }
    g_argv = i < argc ? argv + i : default_argv;
    if (g_ready >= 0)
        fcntl(g_ready, F_SETFD, FD_CLOEXEC);
    if (!g_name || !valid_name(g_name) || !g_id || !g_socket || g_lock_fd < 0)
        fail("sprite-helper start: missing or invalid --name, --id, --socket or --lock-fd");
    if (g_userns == 2 && (g_uid_base == 0 || g_uid_base > 0xFFFFFFFFul - USERNS_RANGE))
        fail("sprite-helper start: --userns 2 needs a valid --uid-base");
    for (int m = 0; m < g_nmounts; m++)
        if (!g_mount_dst[m] || g_mount_src[m][0] != '/' || g_mount_dst[m][0] != '/' || !g_root)
            fail("sprite-helper start: invalid --mount-source %s", g_mount_src[m]);
    fcntl(g_lock_fd, F_SETFD, FD_CLOEXEC);
    /* Records go through a descriptor of our own: the lock stays on the caller's. */
    g_dirfd = openat(g_lock_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (g_dirfd < 0)
        fail("cannot open the sprite's record directory: %s", strerror(errno));
    umask(077);
    g_log = openat(g_dirfd, "log", O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    for (int c = 0; c < g_ncgroups; c++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/cgroup.procs", g_cgroups[c]);
        g_cgroup_fds[c] = open(path, O_WRONLY | O_CLOEXEC);
        if (g_cgroup_fds[c] < 0)
            fail("cannot open cgroup %s: %s", g_cgroups[c], reason_for(errno));
    }
    prepare_console();

    pid_t sup = fork();
    if (sup < 0)
        fail("fork: %s", strerror(errno));
    if (sup == 0)
        supervise();
    _exit(0);
}

/* --------------------------------------------------------------------- exec */

static int g_error_fd = -1;
/* How a pass-through exec (the helper took its caller's place) reports what
 * the caller would have: --error-prefix before a setup failure, then exit
 * --error-status; --timeout-message when --timeout ran out. */
static const char *g_error_prefix = "", *g_timeout_message;
static int g_error_status = 125;
static long g_timeout_ms;

/* A setup failure of exec: one line on the error fd (else stderr). */
static int exec_fail(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    int n, m;

    n = snprintf(buf, sizeof buf, "%s", g_error_fd >= 0 ? "" : g_error_prefix);
    if (n < 0 || n >= (int)sizeof buf - 2)
        n = 0;
    va_start(ap, fmt);
    m = vsnprintf(buf + n, sizeof buf - 1 - (size_t)n, fmt, ap);
    va_end(ap);
    if (m < 0)
        return g_error_status;
    n += m;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    write_all(g_error_fd >= 0 ? g_error_fd : 2, buf, (size_t)n);
    return g_error_status;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The command ran past --timeout and was stopped: say so as the caller would. */
static int timed_out(void)
{
    if (g_timeout_message) {
        write_all(2, g_timeout_message, strlen(g_timeout_message));
        write_all(2, "\n", 1);
    }
    return g_error_status;
}

/* Run the command through the sprite's init (see exec_request) and return
 * the status to exit with; -1 when the sprite offers no exec service (it
 * was started by an older helper), so the caller enters it itself. */
static int exec_through_init(const char *socket_path, char **args, char **extra, int nextra)
{
    static char msg[EXEC_MSG_MAX];
    char control[CMSG_SPACE(3 * sizeof(int))], reply[600];
    struct sockaddr_un addr;
    struct iovec iov;
    struct msghdr hdr;
    struct cmsghdr *cmsg;
    int fds[3] = {0, 1, 2}, dfd, s, sfd;
    size_t used = 0;
    ssize_t n;
    sigset_t set;

    s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (s < 0 || socket_address(socket_path, &addr, &dfd) < 0) {
        if (s >= 0)
            close(s);
        return -1;
    }
    n = connect(s, (struct sockaddr *)&addr, sizeof addr);
    if (dfd >= 0)
        close(dfd);
    if (n < 0) {
        close(s);
        return -1;
    }
#define PUT(prefix, value)                                                          \
    do {                                                                            \
        size_t len_ = strlen(value);                                                \
        if (used + 2 + len_ + 1 > sizeof msg)                                       \
            return exec_fail("the command and its environment are too long");      \
        memcpy(msg + used, prefix, 2);                                              \
        memcpy(msg + used + 2, value, len_ + 1);                                    \
        used += 2 + len_ + 1;                                                       \
    } while (0)
    if (g_user)
        PUT("u:", g_user);
    if (g_workdir)
        PUT("w:", g_workdir);
    for (int e = 0; e < nextra; e++)
        PUT("e:", extra[e]);
    for (char **a = args; *a; a++)
        PUT("a:", *a);
#undef PUT
    iov.iov_base = msg;
    iov.iov_len = used;
    memset(&hdr, 0, sizeof hdr);
    memset(control, 0, sizeof control);
    hdr.msg_iov = &iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control;
    hdr.msg_controllen = sizeof control;
    cmsg = CMSG_FIRSTHDR(&hdr);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    if (sendmsg(s, &hdr, MSG_NOSIGNAL) < 0)
        return exec_fail("cannot reach the sprite's init: %s", strerror(errno));

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    long long deadline = g_timeout_ms > 0 ? now_ms() + g_timeout_ms : -1;
    int stopping = 0; /* 1: SIGTERM sent after the timeout, 2: SIGKILL too */
    for (int started = 0;;) {
        struct pollfd pfd[2] = {{s, POLLIN, 0}, {sfd, POLLIN, 0}};
        int wait = -1;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            if (left <= 0 && stopping < 2) {
                send(s, stopping == 0 ? "s15" : "s9", 3 - (stopping == 1), MSG_NOSIGNAL);
                stopping++;
                deadline = stopping == 1 ? now_ms() + 2000 : -1;
                continue;
            }
            wait = left > 0 ? (int)left : 0;
        }
        if (poll(pfd, sfd >= 0 ? 2 : 1, wait) < 0) {
            if (errno == EINTR)
                continue;
            return exec_fail("poll: %s", strerror(errno));
        }
        if (sfd >= 0 && (pfd[1].revents & POLLIN)) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
                char note[16];
                int len = snprintf(note, sizeof note, "s%u", si.ssi_signo);
                send(s, note, (size_t)len, MSG_NOSIGNAL);
            }
        }
        if (!pfd[0].revents)
            continue;
        n = recv(s, reply, sizeof reply - 1, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (!started)
                return exec_fail("sprite '%s' is not running", g_name ? g_name : "?");
            return stopping ? timed_out() : 128 + SIGKILL; /* the sprite ended under it */
        }
        reply[n] = '\0';
        if (strncmp(reply, "err ", 4) == 0)
            return exec_fail("%s", reply + 4);
        if (strcmp(reply, "run") == 0)
            started = 1;
        else if (stopping && (strncmp(reply, "exit ", 5) == 0 || strncmp(reply, "signal ", 7) == 0))
            return timed_out();
        else if (strncmp(reply, "exit ", 5) == 0)
            return atoi(reply + 5);
        else if (strncmp(reply, "signal ", 7) == 0)
            return 128 + atoi(reply + 7);
    }
}

/* Set NAME=VALUE in envp (replacing NAME if present). */
static int env_set(char **envp, int nenv, char *entry)
{
    size_t klen = (size_t)(strchr(entry, '=') - entry);
    for (int e = 0; e < nenv; e++) {
        if (strncmp(envp[e], entry, klen) == 0 && envp[e][klen] == '=') {
            envp[e] = entry;
            return nenv;
        }
    }
    if (nenv < MAX_ENV - 1)
        envp[nenv++] = entry;
    return nenv;
}

static int cmd_exec(int argc, char **argv)
{
    pid_t pid = 0;
    unsigned long long start = 0;
    int i, pidfd, flags;
    char path[PATH_MAX];
    static char env_buf[1 << 20];
    static char *envp[MAX_ENV];
    static char *extra_env[MAX_ENV];
    int nenv = 0, nextra = 0;
    const char *exec_socket = NULL;

    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "sprite-helper: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        if (common_option(a, v))
            continue;
        if (strcmp(a, "--pid") == 0)
            pid = (pid_t)atoi(v);
        else if (strcmp(a, "--start") == 0)
            start = strtoull(v, NULL, 10);
        else if (strcmp(a, "--env") == 0 && strchr(v, '=') && v[0] != '=') {
            if (nextra < MAX_ENV - 1)
                extra_env[nextra++] = argv[i];
        } else if (strcmp(a, "--exec-socket") == 0) {
            exec_socket = v;
        } else if (strcmp(a, "--timeout-ms") == 0) {
            g_timeout_ms = strtol(v, NULL, 10);
        } else if (strcmp(a, "--timeout-message") == 0) {
            g_timeout_message = v;
        } else if (strcmp(a, "--error-prefix") == 0) {
            g_error_prefix = v;
        } else if (strcmp(a, "--error-status") == 0) {
            g_error_status = atoi(v);
        } else if (strcmp(a, "--error-fd") == 0) {
            g_error_fd = parse_fd(v);
            if (g_error_fd > 2)
                fcntl(g_error_fd, F_SETFD, FD_CLOEXEC);
        } else {
            fprintf(stderr, "sprite-helper: unknown option %s\n", a);
            return 2;
        }
    }
    if (i >= argc || pid <= 0)
        return exec_fail("sprite-helper exec needs --pid and a command");
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 || proc_start(pid) != start)
        return exec_fail("sprite '%s' is not running", g_name ? g_name : "?");
    if (exec_socket) {
        int status = exec_through_init(exec_socket, argv + i, extra_env, nextra);
        if (status >= 0)
            return status;
    }
    snprintf(path, sizeof path, "/proc/%d/environ", (int)pid);
    int efd = open(path, O_RDONLY | O_CLOEXEC);
    if (efd >= 0) {
        size_t got = 0;
        ssize_t r;
        while (got < sizeof env_buf - 1 &&
               (r = read(efd, env_buf + got, sizeof env_buf - 1 - got)) > 0)
            got += (size_t)r;
        close(efd);
        env_buf[got] = '\0';
        for (size_t off = 0; off < got && nenv < MAX_ENV - 1;) {
            size_t len = strlen(env_buf + off);
            if (len > 0 && strchr(env_buf + off, '='))
                nenv = env_set(envp, nenv, env_buf + off);
            off += len + 1;
        }
    }
    for (int e = 0; e < nextra; e++)
        nenv = env_set(envp, nenv, extra_env[e]);
    envp[nenv] = NULL;
    for (int c = 0; c < g_ncgroups; c++) {
        snprintf(path, sizeof path, "%s/cgroup.procs", g_cgroups[c]);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1)
            return exec_fail("cannot join cgroup %s: %s", g_cgroups[c], reason_for(errno));
        close(fd);
    }
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC;
    if (g_netns)
        flags |= CLONE_NEWNET;
    /* A namespace made by an unprivileged caller is entered together with
     * its user namespace; a late one is entered after the others, which the
     * host owns. */
    if (g_userns == 1)
        flags |= CLONE_NEWUSER;
    if (setns(pidfd, flags) < 0 || (g_userns == 2 && setns(pidfd, CLONE_NEWUSER) < 0)) {
        if (errno == ESRCH)
            return exec_fail("sprite '%s' is not running", g_name ? g_name : "?");
        return exec_fail("cannot enter the sprite: %s", reason_for(errno));
    }
    close(pidfd);

    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, &old);
    pid_t child = fork();
    if (child < 0)
        return exec_fail("fork: %s", strerror(errno));
    if (child == 0) {
        char why[256];
        sigprocmask(SIG_SETMASK, &old, NULL);
        if (drop_privileges(g_user, why, sizeof why) < 0)
            _exit(exec_fail("%s", why));
        /* The command must not outlive an exec that was stopped (set after
         * the id change, which clears it). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (chdir(g_workdir ? g_workdir : "/") < 0)
            _exit(exec_fail("cannot enter workdir %s: %s", g_workdir, strerror(errno)));
        for (int e = 0; e < nenv; e++)
            if (strncmp(envp[e], "PATH=", 5) == 0)
                setenv("PATH", envp[e] + 5, 1);
        execvpe(argv[i], argv + i, envp);
        _exit(exec_fail("cannot run %s: %s", argv[i], strerror(errno)));
    }
    long long deadline = g_timeout_ms > 0 ? now_ms() + g_timeout_ms : -1;
    int stopping = 0;
    for (;;) {
        siginfo_t si;
        int sig;
        if (deadline >= 0) {
            long long left = deadline - now_ms();
            if (left <= 0 && stopping < 2) {
                kill(child, stopping == 0 ? SIGTERM : SIGKILL);
                stopping++;
                deadline = stopping == 1 ? now_ms() + 2000 : -1;
                continue;
            }
            struct timespec ts = {(time_t)(left / 1000), (long)(left % 1000) * 1000000};
            sig = sigtimedwait(&set, &si, &ts);
        } else {
            sig = sigwaitinfo(&set, &si);
        }
        if (sig < 0)
            continue;
        if (sig != SIGCHLD) {
            kill(child, sig);
            continue;
        }
        int st;
        pid_t p = waitpid(child, &st, WNOHANG);
        if (p == child) {
            if (stopping)
                return timed_out();
            if (WIFSIGNALED(st))
                return 128 + WTERMSIG(st);
            return WEXITSTATUS(st);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
        printf("sprite-helper %s\n", HELPER_VERSION);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "start") == 0)
        return cmd_start(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "exec") == 0)
        return cmd_exec(argc, argv);
    fprintf(stderr, "usage: sprite-helper start|exec [options] -- COMMAND...\n");
    return 2;
}
