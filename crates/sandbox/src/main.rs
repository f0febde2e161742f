//! The `pvesandbox` command line.

fn main() {
    println!("pvesandbox");
}
