//! MongoDB as coredms through the official driver: a database per tenant and a user with `readWrite`
//! on that database only, authenticated against it (`authSource=<db>`).

use mongodb::bson::doc;
use mongodb::Client;

use super::CoreDmsError;
use crate::store::coredms::Credentials;

pub struct Provisioner {
    client: Client,
}

fn mongo(e: mongodb::error::Error) -> CoreDmsError {
    CoreDmsError::Mongo(e.to_string())
}

/// MongoDB's "user already exists" command error.
const USER_EXISTS: i32 = 51003;

impl Provisioner {
    pub async fn connect(admin_url: &str) -> Result<Self, CoreDmsError> {
        let client = Client::with_uri_str(admin_url).await.map_err(mongo)?;
        client.database("admin").run_command(doc! { "ping": 1 }).await.map_err(mongo)?;
        Ok(Provisioner { client })
    }

    pub async fn provision(&self, creds: &Credentials) -> Result<(), CoreDmsError> {
        let db = self.client.database(&creds.database);
        let roles = vec![doc! { "role": "readWrite", "db": &creds.database }];
        let created = db
            .run_command(doc! { "createUser": &creds.username, "pwd": &creds.password, "roles": roles.clone() })
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::Command(ref c) if c.code == USER_EXISTS) => db
                .run_command(doc! { "updateUser": &creds.username, "pwd": &creds.password, "roles": roles })
                .await
                .map(|_| ())
                .map_err(mongo),
            Err(e) => Err(mongo(e)),
        }
    }

    pub async fn drop(&self, name: &str) -> Result<(), CoreDmsError> {
        let db = self.client.database(name);
        let _ = db.run_command(doc! { "dropUser": name }).await;
        db.drop().await.map_err(mongo)
    }
}
