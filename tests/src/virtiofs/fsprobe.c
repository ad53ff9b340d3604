/* fsprobe: the lab's virtio-fs helper (static, runs in L1 and in the L2 busybox guest).
 *   fsprobe try OP ARGS...   one syscall; prints "ok" or the errno name (EROFS, EXDEV, ...)
 *     OPs: creat P | mkdir P | unlink P | rmdir P | chmod P MODE | rename A B | symlink T P |
 *          link A B | setxattr P NAME VALUE | mknod-chr P | mkfifo P | truncate P
 *   fsprobe getxattr P NAME  prints the value (or the errno name)
 *   fsprobe fsync P DATA     writes DATA to P (created/truncated), fsync(2)s it, prints "ok"
 *   fsprobe mktree DIR FILES DIRS   FILES small files spread over DIRS directories
 *   fsprobe readall DIR LIST N      reads the first N paths of LIST (relative to DIR); prints bytes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

static const char *ename(int e) {
    switch (e) {
    case EROFS: return "EROFS";
    case EXDEV: return "EXDEV";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case ENOTSUP: return "ENOTSUP";
    case EINVAL: return "EINVAL";
    case ENOSYS: return "ENOSYS";
    case ENODATA: return "ENODATA";
    case EIO: return "EIO";
    default: { static char b[32]; snprintf(b, sizeof b, "E%d", e); return b; }
    }
}

static int report(int rc) {
    puts(rc == 0 ? "ok" : ename(errno));
    return 0;
}

static int try_op(int argc, char **argv) {
    const char *op = argv[2];
    if (argc >= 4 && !strcmp(op, "creat")) {
        int fd = open(argv[3], O_CREAT | O_WRONLY | O_EXCL, 0644);
        if (fd >= 0) close(fd);
        return report(fd >= 0 ? 0 : -1);
    }
    if (argc >= 4 && !strcmp(op, "mkdir")) return report(mkdir(argv[3], 0755));
    if (argc >= 4 && !strcmp(op, "unlink")) return report(unlink(argv[3]));
    if (argc >= 4 && !strcmp(op, "rmdir")) return report(rmdir(argv[3]));
    if (argc >= 4 && !strcmp(op, "truncate")) return report(truncate(argv[3], 0));
    if (argc >= 5 && !strcmp(op, "chmod")) return report(chmod(argv[3], strtol(argv[4], 0, 8)));
    if (argc >= 5 && !strcmp(op, "rename")) return report(rename(argv[3], argv[4]));
    if (argc >= 5 && !strcmp(op, "symlink")) return report(symlink(argv[3], argv[4]));
    if (argc >= 5 && !strcmp(op, "link")) return report(link(argv[3], argv[4]));
    if (argc >= 6 && !strcmp(op, "setxattr"))
        return report(setxattr(argv[3], argv[4], argv[5], strlen(argv[5]), 0));
    if (argc >= 4 && !strcmp(op, "mknod-chr"))
        return report(mknod(argv[3], S_IFCHR | 0666, makedev(1, 3)));
    if (argc >= 4 && !strcmp(op, "mkfifo")) return report(mknod(argv[3], S_IFIFO | 0644, 0));
    fprintf(stderr, "fsprobe: bad try op\n");
    return 2;
}

static int mktree(const char *dir, long files, long dirs) {
    char p[4096];
    static const char data[] = "lab virtio-fs tree file\n";
    if (mkdir(dir, 0755) && errno != EEXIST) { perror(dir); return 1; }
    for (long d = 0; d < dirs; d++) {
        snprintf(p, sizeof p, "%s/d%05ld", dir, d);
        if (mkdir(p, 0755) && errno != EEXIST) { perror(p); return 1; }
    }
    for (long f = 0; f < files; f++) {
        snprintf(p, sizeof p, "%s/d%05ld/f%07ld", dir, f % dirs, f);
        int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0) { perror(p); return 1; }
        /* A realistic size mix: mostly tiny, some KiB, a few tens of KiB. */
        size_t n = (f % 100 == 0) ? 32768 : (f % 10 == 0) ? 4096 : sizeof data - 1;
        static char buf[32768];
        if (!buf[0]) for (size_t i = 0; i < sizeof buf; i++) buf[i] = data[i % (sizeof data - 1)];
        if (write(fd, buf, n) != (ssize_t)n) { perror(p); return 1; }
        close(fd);
    }
    return 0;
}

static int readall(const char *dir, const char *list, long n) {
    FILE *l = fopen(list, "r");
    if (!l) { perror(list); return 1; }
    char line[4096], p[8192], buf[65536];
    long total = 0, count = 0;
    while (count < n && fgets(line, sizeof line, l)) {
        line[strcspn(line, "\n")] = 0;
        snprintf(p, sizeof p, "%s/%s", dir, line);
        int fd = open(p, O_RDONLY);
        if (fd < 0) { perror(p); return 1; }
        ssize_t r;
        while ((r = read(fd, buf, sizeof buf)) > 0) total += r;
        close(fd);
        count++;
    }
    printf("%ld %ld\n", count, total);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "try")) return try_op(argc, argv);
    if (argc >= 4 && !strcmp(argv[1], "getxattr")) {
        char v[256];
        ssize_t n = getxattr(argv[2], argv[3], v, sizeof v - 1);
        if (n < 0) { puts(ename(errno)); return 0; }
        v[n] = 0;
        puts(v);
        return 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "fsync")) {
        int fd = open(argv[2], O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0) return report(-1);
        size_t n = strlen(argv[3]);
        if (write(fd, argv[3], n) != (ssize_t)n || fsync(fd)) return report(-1);
        close(fd);
        return report(0);
    }
    if (argc >= 5 && !strcmp(argv[1], "mktree")) return mktree(argv[2], atol(argv[3]), atol(argv[4]));
    if (argc >= 5 && !strcmp(argv[1], "readall")) return readall(argv[2], argv[3], atol(argv[4]));
    fprintf(stderr, "usage: see fsprobe.c\n");
    return 2;
}
