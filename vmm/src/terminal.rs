//! Puts an interactive terminal in raw mode while the guest owns the console, and puts it
//! back on every way out, a panic included ([`install_panic_hook`]).

use std::sync::OnceLock;

/// The mode stdin had before the first [`RawTerminal::enter`], for the panic hook (which
/// cannot reach the `RawTerminal` on some thread's stack).
static ORIGINAL: OnceLock<libc::termios> = OnceLock::new();

/// Restores the saved terminal mode, if raw mode was ever entered.
fn restore_original() {
    if let Some(original) = ORIGINAL.get() {
        // SAFETY: valid fd and the termios read by `enter`.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
    }
}

/// Installs a panic hook that restores the terminal, prints the panic once on stderr and
/// exits with the documented status 6 at once (the release build aborts on panic; without
/// the hook that is status 134 with the terminal left raw).
pub fn install_panic_hook() {
    vmconfig::exit::install_panic_hook("tinyvmm", restore_original);
}

/// Restores the terminal's original mode when dropped or on [`RawTerminal::restore`].
pub struct RawTerminal {
    original: Option<libc::termios>,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; otherwise does nothing.
    pub fn enter() -> Self {
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Self { original: None };
        }
        // SAFETY: termios is plain data; tcgetattr fills it in or fails.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and pointer to a termios we own.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return Self { original: None };
        }
        let _ = ORIGINAL.set(original);
        let mut raw = original;
        // SAFETY: cfmakeraw only edits the struct we pass.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so host-side logs still get carriage returns.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: valid fd and a fully initialised termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Self { original: None };
        }
        Self {
            original: Some(original),
        }
    }

    /// Puts the terminal back the way it was.
    pub fn restore(&mut self) {
        if let Some(original) = self.original.take() {
            // SAFETY: valid fd and the termios read earlier.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &original) };
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        self.restore();
    }
}
