//! Throwaway network namespaces for tests that need a real TAP.
