//! `mysimbdp-sandbox`: the init of the sandbox every tenant's program runs in. The platform starts it
//! (in a run's new namespaces, with the run's spec on descriptor 3); it is not a command for people.
//! See `mysimbdp::runtime::sandbox::init`.

fn main() {
    mysimbdp::runtime::sandbox::init::main()
}
