from django.db import migrations

from tenancy.rls.operations import TenantRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("tenancy", "0001_initial")]

    operations = [TenantRowLevelSecurity()]
