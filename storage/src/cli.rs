pub fn main_with_args() {}
