// `sqlx::migrate!` embeds `migrations/` at compile time, but cargo does not know the folder is an
// input: without this, a new migration file leaves a binary built before it unchanged.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
