//! Puts an interactive terminal in raw mode while the guest owns the console.

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
